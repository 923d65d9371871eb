"""Small image helpers (grids with labels) shared by results, sheets and plots."""

from __future__ import annotations

import math
from typing import Any, Sequence


def image_grid(images: Sequence[Any], cols: int | None = None, labels: Sequence[str] | None = None,
               pad: int = 4, background: tuple[int, int, int] = (255, 255, 255)) -> Any:
    """Lay images out in a grid (row-major); a label, if given, is drawn under each cell."""
    from PIL import Image, ImageDraw, ImageFont

    if not images:
        raise ValueError("image_grid needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"labels ({len(labels)}) must match images ({len(images)})")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    font = ImageFont.load_default()
    label_h = 14 if labels else 0
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + label_h + pad) + pad), background)
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        x, y = pad + c * (w + pad), pad + r * (h + label_h + pad)
        grid.paste(im.convert("RGB"), (x, y))
        if labels:
            draw.text((x + 2, y + h + 1), str(labels[i]), fill=(0, 0, 0), font=font)
    return grid
