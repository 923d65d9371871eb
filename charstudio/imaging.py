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
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [fit_label(str(t), w - 2, lambda s: measure.textlength(s, font=font)) for t in labels or []]
    label_h = LABEL_LINE_HEIGHT * max(len(ls) for ls in lines) + 2 if labels else 0
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + label_h + pad) + pad), background)
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        x, y = pad + c * (w + pad), pad + r * (h + label_h + pad)
        grid.paste(im.convert("RGB"), (x, y))
        for k, line in enumerate(lines[i] if labels else []):
            draw.text((x + 2, y + h + 1 + k * LABEL_LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
    return grid


LABEL_LINE_HEIGHT = 12
LABEL_MAX_LINES = 3


def fit_label(text: str, width: float, length: Any) -> list[str]:
    """Break ``text`` into at most `LABEL_MAX_LINES` lines no wider than ``width`` (as ``length``
    measures them), after '_', '-' or a space where possible; a label still too long ends in '...'."""
    lines: list[str] = []
    rest = text
    while rest and len(lines) < LABEL_MAX_LINES:
        if length(rest) <= width:
            lines.append(rest)
            return lines
        n = 1
        while n < len(rest) and length(rest[:n + 1]) <= width:
            n += 1  # the longest prefix that fits (at least one character)
        breaks = [k + 1 for k in range(n) if rest[k] in "_- "]
        cut = breaks[-1] if breaks and len(lines) < LABEL_MAX_LINES - 1 else n
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        last = lines[-1]
        while last and length(last + "...") > width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines
