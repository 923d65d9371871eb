"""Measured smoothness of design interpolations: evenness with equal t steps vs re-spaced t.

    python benchmarks/interpolation.py                     # tiny on CPU, pixel distances
    python benchmarks/interpolation.py --model sd15 --clip openai/clip-vit-base-patch32

For each pair of designs, renders `--frames` frames with equal t steps and with
`uniform=True` (adaptive re-spacing), and prints mean/max adjacent distance and evenness
(1 - Gini of the adjacent distances) for both, plus the number of renders re-spacing took.
"""

from __future__ import annotations

import argparse
import time

PAIRS = [
    ("a girl with red hair, green dress", "a knight in silver armour, blue cape"),
    ("a small dragon, orange scales", "a robot cat, chrome, neon eyes"),
    ("an old wizard, long white beard", "a young witch, black hat, purple robe"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--frames", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--scheduler", default="ddim")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clip", default=None, help="CLIP model (hub id or folder) for semantic distances")
    args = ap.parse_args()

    import torch

    from charstudio import Studio
    from charstudio.interpolation import clip_image_embedder

    if args.threads:
        torch.set_num_threads(args.threads)
    studio = Studio.from_pretrained(args.model, device=args.device)
    embedder = None
    if args.clip:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        embedder = clip_image_embedder(CLIPVisionModelWithProjection.from_pretrained(args.clip).eval(),
                                       CLIPImageProcessor.from_pretrained(args.clip))
    settings = dict(num_inference_steps=args.steps, scheduler=args.scheduler)
    print(f"model={args.model} frames={args.frames} steps={args.steps} scheduler={args.scheduler} "
          f"space={'clip' if embedder else 'pixels'}")
    print(f"{'pair':<5} {'equal-t evenness':>17} {'re-spaced evenness':>19} {'max/mean before':>16} "
          f"{'max/mean after':>15} {'renders':>8} {'seconds':>8}")
    for k, (a, b) in enumerate(PAIRS):
        ra = studio.make_config(a, seed=10 + k, **settings)
        rb = studio.make_config(b, seed=20 + k, **settings)
        t0 = time.perf_counter()
        res = studio.interpolate(ra, rb, frames=args.frames, uniform=True, embedder=embedder)
        secs = time.perf_counter() - t0
        before, after = res.before, res.smoothness
        print(f"{k:<5} {before.evenness:17.3f} {after.evenness:19.3f} {before.max / before.mean:16.2f} "
              f"{after.max / after.mean:15.2f} {res.renders:8d} {secs:8.1f}")
        print(f"      t = {', '.join(f'{t:.3f}' for t in res.ts)}")


if __name__ == "__main__":
    main()
