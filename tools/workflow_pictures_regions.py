"""Draw the README's picture of regional prompts on the built-in `mini` model (docs/images/regions.png).

    python tools/workflow_pictures_regions.py [--out docs/images/regions.png] [--seeds 4] [--overwrite]

Two figures on a 128x64 canvas (two poses side by side for the ControlNet), seeds 0..N-1 in
columns. Row 1: the pose. Row 2: one prompt naming both, "a girl with red hair and a boy with
blue hair". Row 3: the same prompt as the scene, with the regions "a girl with red hair" (left)
and "a boy with blue hair" (right). Same seeds in both rows. It also prints the hit rate over
10 seeds (left hair nearest red and right hair nearest blue), with and without regions.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SCENE = "a girl with red hair and a boy with blue hair"
REGIONS = [{"prompt": "a girl with red hair", "box": "left"}, {"prompt": "a boy with blue hair", "box": "right"}]


def main() -> int:
    from PIL import Image, ImageDraw

    from charstudio import Studio
    from charstudio.io_utils import atomic_write
    from charstudio.mini.measure import hair_region, nearest_colour, region_colour
    from charstudio.mini.world import HAIR_COLOURS
    from charstudio.pose.compose import side_by_side

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "images" / "regions.png"))
    p.add_argument("--seeds", type=int, default=4, help="columns (seeds 0..N-1)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    studio = Studio.from_pretrained("mini", device="cpu")
    group = side_by_side("standing_front", "standing_front", width=128, height=64)

    def draw(seed: int, regions: list | None) -> Image.Image:
        return studio.generate(SCENE, pose=group, width=128, height=64, seed=seed, num_inference_steps=args.steps,
                               regions=regions).image

    def hit(image: Image.Image) -> bool:
        got = [nearest_colour(region_colour(image, hair_region(person)), HAIR_COLOURS) for person in group.people]
        return got == ["red", "blue"]

    measured = max(10, args.seeds)
    rows = {"plain": [], "regions": []}
    rates = {}
    for name, regions in (("plain", None), ("regions", REGIONS)):
        images = []
        for seed in range(measured):
            images.append(draw(seed, regions))
            print(f"{name}: seed {seed} drawn", flush=True)
        rows[name] = images[:args.seeds]
        rates[name] = sum(map(hit, images)) / measured
    print(f"left red and right blue, {measured} seeds, {args.steps} steps: without regions {rates['plain']:.0%}, "
          f"with regions {rates['regions']:.0%}")

    tile_w, tile_h, label = 128 * args.scale, 64 * args.scale, 14
    titles = [("pose: two poses side by side", [group.render()] * args.seeds),
              (f"one prompt: \"{SCENE}\" ({rates['plain']:.0%} of {measured} seeds right)", rows["plain"]),
              (f"regions: left \"a girl with red hair\", right \"a boy with blue hair\" ({rates['regions']:.0%})",
               rows["regions"])]
    canvas = Image.new("RGB", (args.seeds * (tile_w + 4), len(titles) * (tile_h + label)), "white")
    pen = ImageDraw.Draw(canvas)
    for r, (title, images) in enumerate(titles):
        y = r * (tile_h + label)
        pen.text((2, y + 1), title, fill=(0, 0, 0))
        for i, im in enumerate(images):
            canvas.paste(im.resize((tile_w, tile_h), Image.NEAREST), (i * (tile_w + 4), y + label))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: canvas.save(tmp, format="PNG"), overwrite=args.overwrite)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
