"""Draw the README's before/after pictures of inpainting and the detail pass on `mini`.

    python tools/workflow_pictures_inpaint.py [--out-dir docs/images] [--scale 4] [--overwrite]

docs/images/inpaint.png: three characters drawn with red hair (top), the same pictures with a
box round the hair inpainted with "blue hair" (middle), and the mask with its seam (bottom).
docs/images/detail.png: three pictures (top) and the same after the detail pass on the face and
hands (middle), with the boxes the pose gave (bottom).
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _grid(rows: list[list], labels: list[str], scale: int):
    from PIL import Image, ImageDraw

    cell = rows[0][0].width * scale
    label_w = 7 * max(len(s) for s in labels) + 10
    out = Image.new("RGB", (label_w + cell * len(rows[0]), cell * len(rows)), "white")
    draw = ImageDraw.Draw(out)
    for r, (row, label) in enumerate(zip(rows, labels)):
        draw.text((4, r * cell + cell // 2 - 6), label, fill="black")
        for c, image in enumerate(row):
            out.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (label_w + c * cell, r * cell))
    return out


def _boxes_picture(image, boxes, alpha=None):
    import numpy as np
    from PIL import Image, ImageDraw

    base = np.asarray(image.convert("RGB"), dtype=np.float32) * 0.5
    if alpha is not None:
        base = base + alpha[..., None] * np.array([255.0, 255.0, 255.0]) * 0.5
    out = Image.fromarray(base.clip(0, 255).astype("uint8"))
    draw = ImageDraw.Draw(out)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 220, 0))
    return out


def main() -> int:
    import numpy as np

    from charstudio import Studio
    from charstudio.io_utils import atomic_write
    from charstudio.mini.world import random_attributes, random_pose

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent.parent / "docs" / "images"))
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()
    out_dir = Path(args.out_dir)

    studio = Studio.from_pretrained("mini", device="cpu")
    from charstudio.mini.measure import hair_region

    # 1. Inpainting: red hair drawn, a box round the hair redrawn as blue hair.
    before, after, shown = [], [], []
    for seed in (0, 3, 6):
        rng = random.Random(10_000 + seed)
        attrs = random_attributes(rng).replace(hair_colour="red", accessory="none")
        pose = random_pose(rng, 64)
        source = studio.generate(attrs.caption(), pose=pose, seed=seed, num_inference_steps=20)
        ys, xs = np.nonzero(hair_region(pose, 64))
        box = (max(int(xs.min()) - 2, 0), max(int(ys.min()) - 2, 0), min(int(xs.max()) + 3, 64),
               min(int(ys.max()) + 3, 64))
        blue = studio.inpaint(source, mask=box, prompt=attrs.replace(hair_colour="blue").caption(), strength=0.8)
        before.append(source.image)
        after.append(blue.image)
        shown.append(_boxes_picture(source.image, [box], blue.extras["mask"]))
    inpaint = _grid([before, after, shown], ["drawn", "inpainted", "mask+seam"], args.scale)

    # 2. The detail pass on the face and hands, boxes from the pose.
    before, after, shown = [], [], []
    for seed, pose in ((4, "waving"), (5, "standing_front"), (6, "walking")):
        rng = random.Random(40_000 + seed)
        attrs = random_attributes(rng).replace(accessory="none")
        drawn = studio.generate(attrs.caption(), pose=pose, seed=seed, num_inference_steps=20)
        done = studio.detail(drawn, parts=("face", "hands"))
        before.append(drawn.image)
        after.append(done.image)
        shown.append(_boxes_picture(drawn.image, [box for _, box in done.extras["detail_boxes"][0]]))
    detail = _grid([before, after, shown], ["drawn", "detail pass", "boxes"], args.scale)

    for name, picture in (("inpaint.png", inpaint), ("detail.png", detail)):
        path = atomic_write(out_dir / name, lambda tmp, im=picture: im.save(tmp, format="PNG"),
                            overwrite=args.overwrite)
        print(path)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
