"""Draw the README's before/after picture of the hires fix on `mini`.

    python tools/workflow_pictures_hires.py [--out-dir docs/images] [--cell 288] [--overwrite]

docs/images/hires.png: three characters drawn at mini's 64 px (top), the same pictures resized to
96 px with Lanczos (middle) and after the hires fix at 1.5x (bottom: Lanczos, then a second pass
at strength 0.4 under the same prompt, seed and pose). Every cell is enlarged to the same size
with nearest-neighbour, so the pixels show.
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _grid(rows: list[list], labels: list[str], cell: int):
    from PIL import Image, ImageDraw

    label_w = 7 * max(len(s) for s in labels) + 10
    out = Image.new("RGB", (label_w + cell * len(rows[0]), cell * len(rows)), "white")
    draw = ImageDraw.Draw(out)
    for r, (row, label) in enumerate(zip(rows, labels)):
        draw.text((4, r * cell + cell // 2 - 6), label, fill="black")
        for c, image in enumerate(row):
            out.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (label_w + c * cell, r * cell))
    return out


def main() -> int:
    from PIL import Image

    from charstudio import Studio
    from charstudio.io_utils import atomic_write
    from charstudio.mini.world import random_attributes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent.parent / "docs" / "images"))
    p.add_argument("--cell", type=int, default=288, help="pixels per picture in the grid (a multiple of 64 and 96)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()

    studio = Studio.from_pretrained("mini", device="cpu")
    first, resized, hires = [], [], []
    for seed, pose in ((1, "standing_front"), (2, "waving"), (3, "walking")):
        attrs = random_attributes(random.Random(20_000 + seed))
        result = studio.generate(attrs.caption(), pose=pose, seed=seed, hires={"scale": 1.5, "strength": 0.4})
        drawn = result.extras["first_pass"][0]
        first.append(drawn)
        resized.append(drawn.resize(result.image.size, Image.LANCZOS))
        hires.append(result.image)
    picture = _grid([first, resized, hires], ["drawn 64 px", "Lanczos 96 px", "hires fix 96 px"], args.cell)
    path = atomic_write(Path(args.out_dir) / "hires.png", lambda tmp: picture.save(tmp, format="PNG"),
                        overwrite=args.overwrite)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
