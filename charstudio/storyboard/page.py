"""A storyboard page: the panels in reading order, each with its number, caption and line under it.

Panels keep their shape (a two-character panel is wider) and share one height; they flow left to
right into rows no wider than three one-character panels. A panel whose shot is a crop of the
drawn picture (small models draw whole figures, see `charstudio.storyboard.script`) shows that
box, scaled up. Small pictures scale with NEAREST so mini's pixels stay crisp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

MARGIN = 16
GAP = 12
PAPER = (255, 255, 255)
INK = (20, 20, 20)
QUIET = (90, 90, 90)


@dataclass
class PagePanel:
    """What the page shows of one panel."""

    image: Any
    number: int
    caption: str = ""
    line: str = ""
    crop: Sequence[float] | None = None  # (left, top, right, bottom) of the drawn picture, or the whole


def panel_height(native: int) -> int:
    """The panels' height on the page: mini's 64 px scaled 3x; big models' pictures scaled down."""
    return 192 if native < 256 else 384


def compose_page(panels: Sequence[PagePanel], *, title: str = "", height: int = 192, per_row: int = 3) -> Any:
    """The page (a PIL RGB image): ``title`` on top, then the panels in rows."""
    from PIL import Image, ImageDraw

    from ..imaging import label_font

    big, font, small = label_font(max(14, height // 10)), label_font(max(11, height // 15)), label_font(max(10, height // 17))
    row_width = per_row * height + (per_row - 1) * GAP
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    # 1. Each panel's picture at the page's height, and its text wrapped to its width.
    cells = []
    for p in panels:
        pic = p.image.convert("RGB")
        if p.crop is not None:
            pic = pic.crop(tuple(int(round(v)) for v in p.crop))
        width = max(1, round(pic.width * height / pic.height))
        width = min(width, row_width)
        pic = pic.resize((width, height), Image.NEAREST if pic.height < height else Image.LANCZOS)
        lines = [(f"{p.number}", big, INK)]
        lines += [(t, font, INK) for t in wrap(p.caption, font, width, measure)]
        lines += [(t, small, QUIET) for t in wrap(f"\u201c{p.line}\u201d" if p.line else "", small, width, measure)]
        cells.append((pic, lines))

    # 2. Rows: as many panels as fit in the row's width.
    rows: list[list[tuple[Any, list]]] = [[]]
    used = 0
    for cell in cells:
        w = cell[0].width
        if rows[-1] and used + GAP + w > row_width:
            rows.append([])
            used = 0
        used += (GAP if rows[-1] else 0) + w
        rows[-1].append(cell)

    def text_height(lines: list) -> int:
        return sum(_line_height(f) for _, f, _ in lines)

    title_h = _line_height(big) + GAP if title else 0
    row_heights = [height + 4 + max(text_height(lines) for _, lines in row) for row in rows]
    page = Image.new("RGB", (row_width + 2 * MARGIN, 2 * MARGIN + title_h + sum(row_heights) + GAP * (len(rows) - 1)),
                     PAPER)
    draw = ImageDraw.Draw(page)
    y = MARGIN
    if title:
        draw.text((MARGIN, y), title, fill=INK, font=big)
        y += title_h
    # 3. Draw each row: picture, a thin frame, then its text.
    for row, row_h in zip(rows, row_heights):
        x = MARGIN
        for pic, lines in row:
            page.paste(pic, (x, y))
            draw.rectangle((x - 1, y - 1, x + pic.width, y + height), outline=INK)
            ty = y + height + 4
            for text, f, colour in lines:
                draw.text((x, ty), text, fill=colour, font=f)
                ty += _line_height(f)
            x += pic.width + GAP
        y += row_h + GAP
    return page


def wrap(text: str, font: Any, width: float, measure: Any) -> list[str]:
    """``text`` in lines no wider than ``width`` (a word longer than the width is cut)."""
    words, lines, current = text.split(), [], ""
    for word in words:
        trial = f"{current} {word}".strip()
        if measure.textlength(trial, font=font) <= width or not current:
            current = trial
        else:
            lines.append(current)
            current = word
        while measure.textlength(current, font=font) > width and len(current) > 1:
            cut = current
            while len(cut) > 1 and measure.textlength(cut, font=font) > width:
                cut = cut[:-1]
            lines.append(cut)
            current = current[len(cut):]
    if current:
        lines.append(current)
    return lines


def _line_height(font: Any) -> int:
    size = getattr(font, "size", 10)
    return int(size * 1.3) + 1


def save_pdf(page: Any, path: Any) -> None:
    """The page as a one-page PDF (Pillow's writer; 96 dpi, so it prints at its screen size)."""
    page.convert("RGB").save(path, format="PDF", resolution=96.0)
