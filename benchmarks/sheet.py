"""Benchmark: a 4-pose character sheet against four plain diffusers ControlNet calls.

    python benchmarks/sheet.py                      # the built-in mini model on this CPU
    python benchmarks/sheet.py --model sd15         # on a GPU

Prints the model load time, the median wall time of `Studio.sheet` (same noise, labelled grid,
no embedder) and of four `StableDiffusionControlNetPipeline` calls on the same components,
control images and seed, alternating runs, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

POSES = ["standing_front", "walking", "waving", "running"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mini")
    ap.add_argument("--card", default="rin")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    import torch

    from charstudio import Studio
    from charstudio.character import compose_prompt, load_character
    from charstudio.pose import load_pose

    t0 = time.perf_counter()
    studio = Studio.from_pretrained(args.model, device=args.device)
    load_s = time.perf_counter() - t0
    size = studio.default_size
    card = load_character(args.card)
    prompt, negative = compose_prompt(card, None)
    pipe = studio.pipeline("controlnet")
    controls = [load_pose(p).fit(size, size).render(size, size) for p in POSES]

    def ours() -> None:
        studio.sheet(card, POSES, seed=card.seed or 0, num_inference_steps=args.steps, compute_score=False)

    def plain() -> None:
        for control in controls:
            pipe(prompt, negative_prompt=negative or None, image=control, num_inference_steps=args.steps,
                 guidance_scale=studio.default_guidance, width=size, height=size,
                 generator=torch.Generator("cpu").manual_seed(card.seed or 0))

    ours(), plain()  # warm-up
    t_ours, t_plain = [], []
    for _ in range(args.repeats):
        for fn, out in ((ours, t_ours), (plain, t_plain)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    a, b = statistics.median(t_ours), statistics.median(t_plain)
    print(f"model {args.model} on {studio.device}: load {load_s:.2f} s, {size} px, {args.steps} steps, {len(POSES)} poses")
    print(f"Studio.sheet          {a:.2f} s per sheet")
    print(f"plain diffusers x{len(POSES)}    {b:.2f} s")
    print(f"ratio                 {a / b:.3f}x")


if __name__ == "__main__":
    main()
