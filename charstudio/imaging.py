"""Small image helpers (grids with labels) shared by results, sheets and plots."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence


def image_grid(images: Sequence[Any], cols: int | None = None, labels: Sequence[str] | None = None,
               pad: int = 4, background: tuple[int, int, int] = (255, 255, 255),
               notes: Sequence[str] | None = None, note_colours: Sequence[tuple[int, int, int]] | None = None) -> Any:
    """Lay images out in a grid (row-major); a label, if given, is drawn under each cell on one
    line that fits the cell (`fit_labels`: a smaller font first, then '...'). ``notes``: a second
    line under each label (a sheet's identity score), in ``note_colours`` (default black)."""
    from PIL import Image, ImageDraw

    if not images:
        raise ValueError("image_grid needs at least one image")
    for name, given in (("labels", labels), ("notes", notes), ("note_colours", note_colours)):
        if given is not None and len(given) != len(images):
            raise ValueError(f"{name} ({len(given)}) must match images ({len(images)})")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    font, lines = fit_labels([str(t) for t in labels or []], w - 2)
    note_font, note_lines = fit_labels([str(t) for t in notes or []], w - 2)
    label_h = (LABEL_LINE_HEIGHT + 2 if labels else 0) + (LABEL_LINE_HEIGHT if notes else 0)
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + label_h + pad) + pad), background)
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        x, y = pad + c * (w + pad), pad + r * (h + label_h + pad)
        grid.paste(im.convert("RGB"), (x, y))
        if labels:
            draw.text((x + 2, y + h + 1), lines[i], fill=(0, 0, 0), font=font)
        if notes:
            top = y + h + 1 + (LABEL_LINE_HEIGHT if labels else 0)
            draw.text((x + 2, top), note_lines[i], fill=tuple(note_colours[i]) if note_colours else (0, 0, 0),
                      font=note_font)
    return grid


LABEL_LINE_HEIGHT = 12
LABEL_MAX_LINES = 1  # a label is one line: wrapped labels ("standing_" / "front") read as two words
LABEL_FONT_SIZES = (10, 9, 8, 7)  # tried largest first; below 7 px the default font is no longer legible


def label_font(size: int) -> Any:
    """PIL's built-in font at ``size`` px (its bitmap font, one size, where Pillow lacks FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default()


def fit_labels(labels: Sequence[str], width: float) -> tuple[Any, list[str]]:
    """One font for all of a grid's labels and each label as one line no wider than ``width``: the
    largest of `LABEL_FONT_SIZES` at which every label fits, else the smallest, with the labels that
    still do not fit cut and ended in '...' (`fit_label`)."""
    from PIL import Image, ImageDraw

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for size in LABEL_FONT_SIZES:
        font = label_font(size)
        if all(measure.textlength(t, font=font) <= width for t in labels):
            return font, list(labels)
    return font, [fit_label(t, width, lambda s: measure.textlength(s, font=font)) for t in labels]


def fit_label(text: str, width: float, length: Callable[[str], float]) -> str:
    """``text`` itself when ``length`` says it is no wider than ``width``, else its longest start
    that fits with '...' after it, so a cut label says it was cut."""
    if length(text) <= width:
        return text
    cut = text
    while cut and length(cut + "...") > width:
        cut = cut[:-1]
    return cut.rstrip("_- ") + "..."
