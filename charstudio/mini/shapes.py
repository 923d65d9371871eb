"""Drawing primitives shared by the world's renderer, its held-out features and its measures."""

from __future__ import annotations

from typing import Any

import numpy as np

RGB = tuple[int, int, int]


def disc(draw: Any, c: Any, r: float, colour: RGB) -> None:
    draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=colour)


def limb(draw: Any, pts: list[Any], width: float, colour: RGB) -> None:
    pts = [tuple(map(float, q)) for q in pts]
    draw.line(pts, fill=colour, width=max(1, int(round(width))), joint="curve")
    for q in (pts[0], pts[-1]):
        disc(draw, q, width / 2, colour)


def expand(poly: list[Any], factor: float) -> list[tuple[float, float]]:
    """``poly`` scaled by ``factor`` about its centroid."""
    c = np.mean(np.asarray(poly, dtype=np.float64), axis=0)
    return [tuple(map(float, c + (np.asarray(q) - c) * factor)) for q in poly]
