"""Draw the README's turnaround and expression-sheet pictures on the built-in `mini` model.

    python tools/workflow_pictures_sheets.py [--out docs/images] [--scale 3]

docs/images/turnaround.png: the `kai` card from the front, three-quarter, side and back, then
waving, from the front and from behind (the raised right hand moves to the other side).
docs/images/expressions.png: `kai` with the six default expressions, the grid of face crops.
mini knows no expression words, so its faces stay the same: the picture shows the sheet (one
pose, shared noise and reference, the crop), not expressions; a real model draws those.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def scaled_grid(images: list, labels: list[str], scale: int, cols: int):
    """The pictures scaled up (nearest, so mini's pixels stay visible) in a labelled grid."""
    from PIL import Image

    from charstudio.imaging import image_grid

    big = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
    return image_grid(big, cols=cols, labels=labels)


def main() -> int:
    from charstudio import Studio
    from charstudio.io_utils import atomic_write
    from charstudio.pose import load_pose
    from charstudio.workflows.turnaround import DEFAULT_VIEWS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "images"))
    p.add_argument("--scale", type=int, default=3)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    studio = Studio.from_pretrained("mini", device="cpu")
    waving = load_pose("waving")
    views = [*DEFAULT_VIEWS, ("waving", waving, "waving"), ("back, waving", waving.back_view(), "from behind, waving")]
    turn = studio.turnaround("kai", views, seed=1, compute_score=False)
    faces = studio.expressions("kai", seed=2, compute_score=False)

    written = []
    for name, grid in (("turnaround.png", scaled_grid(turn.images, turn.labels, args.scale, cols=6)),
                       ("expressions.png", scaled_grid(faces.crops, faces.labels, args.scale, cols=6))):
        written.append(atomic_write(out / name, lambda tmp, g=grid: g.save(tmp, format="PNG"), overwrite=True))
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
