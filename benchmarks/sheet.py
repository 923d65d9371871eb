"""Benchmark: a 4-pose character sheet against four plain diffusers ControlNet calls.

    python benchmarks/sheet.py                      # the built-in mini model on this CPU
    python benchmarks/sheet.py --model sd15         # on a GPU

Prints the model load time, the median wall time of `Studio.sheet` (same noise, labelled grid,
no embedder; its poses run as one UNet batch), of the same sheet one pose per call
(`studio.max_batch = 1`), and of four `StableDiffusionControlNetPipeline` calls on the same
components, control images and seed, alternating runs, and their ratios.
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
        studio.max_batch = 8
        studio.sheet(card, POSES, seed=card.seed or 0, num_inference_steps=args.steps, compute_score=False)

    def one_by_one() -> None:
        studio.max_batch = 1
        studio.sheet(card, POSES, seed=card.seed or 0, num_inference_steps=args.steps, compute_score=False)

    def plain() -> None:
        for control in controls:
            pipe(prompt, negative_prompt=negative or None, image=control, num_inference_steps=args.steps,
                 guidance_scale=studio.default_guidance, width=size, height=size,
                 generator=torch.Generator("cpu").manual_seed(card.seed or 0))

    ours(), one_by_one(), plain()  # warm-up
    t_ours, t_single, t_plain = [], [], []
    for _ in range(args.repeats):
        for fn, out in ((ours, t_ours), (one_by_one, t_single), (plain, t_plain)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    a, c, b = statistics.median(t_ours), statistics.median(t_single), statistics.median(t_plain)
    print(f"model {args.model} on {studio.device}: load {load_s:.2f} s, {size} px, {args.steps} steps, {len(POSES)} poses")
    print(f"Studio.sheet (one batch)      {a:.2f} s per sheet")
    print(f"Studio.sheet (max_batch=1)    {c:.2f} s")
    print(f"plain diffusers x{len(POSES)} calls    {b:.2f} s")
    print(f"batched / four plain calls    {a / b:.3f}x")
    print(f"one-by-one / four plain calls {c / b:.3f}x")


if __name__ == "__main__":
    main()
