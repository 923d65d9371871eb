"""Measuring pictures of the world: where the hair, cape, neck and figure are for a pose, and
the colours found there (for the behaviour tests, the evaluation and the training report)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from .world import HAIR_COLOURS, RGB, SUPERSAMPLE, Figure, disc, limb


def _mask(pose: Any, width: int, height: int, draw: Any) -> np.ndarray:
    """A boolean mask drawn by ``draw(ImageDraw, Figure)`` on the pose fitted to width x height."""
    from PIL import Image, ImageDraw

    pose = pose.fit(width, height)
    img = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    draw(ImageDraw.Draw(img), Figure(pose, SUPERSAMPLE))
    return np.asarray(img.resize((width, height), Image.BOX)) > 127


def _canvas(pose: Any, size: int | None) -> tuple[int, int]:
    return (size, size) if size is not None else (int(pose.canvas_width), int(pose.canvas_height))


def hair_region(pose: Any, size: int | None = None) -> np.ndarray:
    """Boolean mask of where hair always is for this pose: the top cap of the head, above the
    eyes and below a hat's brim."""
    def draw(d: Any, f: Figure) -> None:
        d.polygon(f.arc(0.98, -66, 66) + [f.local(0.8, 0.3), f.local(-0.8, 0.3)], fill=255)

    return _mask(pose, *_canvas(pose, size), draw)


def region_colour(image: Any, mask: np.ndarray) -> np.ndarray:
    """Median RGB of ``image`` inside ``mask`` (robust to a stray eye or edge pixel)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    if not mask.any():
        raise ConfigError("mask", "empty", "a region with at least one pixel")
    return np.median(arr[mask], axis=0)


def nearest_colour(rgb: Any, table: dict[str, RGB] = HAIR_COLOURS) -> str:
    """The name in ``table`` whose colour is nearest ``rgb`` (Euclidean in RGB)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return min(table, key=lambda k: float(np.sum((np.asarray(table[k], dtype=np.float64) - rgb) ** 2)))


def foreground(image: Any, background: RGB | None = None, tolerance: float = 40.0) -> np.ndarray:
    """Pixels that differ from the background colour (default: the median border colour)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    if background is None:
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
        background = np.median(border, axis=0)
    return np.sqrt(((arr - np.asarray(background, dtype=np.float64)) ** 2).sum(-1)) > tolerance


def skeleton_mask(pose: Any, width: int, height: int, thickness: float = 0.3) -> np.ndarray:
    """The pose's limbs and head drawn thick (a dilated skeleton), as a boolean mask.

    ``thickness`` is the limb width as a fraction of the torso length; the head is a disc.
    """
    from ..pose import LIMBS

    def draw(d: Any, f: Figure) -> None:
        for a, b in LIMBS[:12]:  # body limbs, not the face lines
            if f.ok[a] and f.ok[b]:
                limb(d, [f.p[a], f.p[b]], thickness * f.torso, 255)
        if f.has(2, 5, 8, 11):
            d.polygon([tuple(q) for q in (f.p[2], f.p[5], f.p[11], f.p[8])], fill=255)
        disc(d, f.head, f.head_r * 1.1, 255)

    return _mask(pose, width, height, draw)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def hue(rgb: Any) -> float:
    """Hue in degrees, 0-360."""
    import colorsys

    r, g, b = (float(c) / 255.0 for c in rgb)
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360.0


def saturated_hue_fraction(image: Any, hues: tuple[float, float], mask: np.ndarray | None = None,
                           min_saturation: float = 0.6, min_value: float = 0.6) -> float:
    """Fraction of pixels (inside ``mask``) whose hue lies in ``hues`` (degrees, lo to hi; lo > hi
    wraps round 0) and that are saturated and bright enough to be that colour, not a pale tint."""
    arr = np.asarray(image.convert("HSV"), dtype=np.float64)
    h = arr[..., 0] * 360.0 / 255.0
    lo, hi = hues
    in_range = (h >= lo) & (h <= hi) if lo <= hi else (h >= lo) | (h <= hi)
    hit = in_range & (arr[..., 1] / 255.0 > min_saturation) & (arr[..., 2] / 255.0 > min_value)
    if mask is not None:
        return float(hit[mask].mean()) if mask.any() else 0.0
    return float(hit.mean())


def orange_fraction(image: Any, mask: np.ndarray | None = None) -> float:
    """Fraction of pixels (inside ``mask``) that are saturated orange, hue 20-40 degrees (yellows are ~47)."""
    return saturated_hue_fraction(image, (20, 40), mask)


def red_fraction(image: Any, mask: np.ndarray | None = None) -> float:
    """Fraction of pixels (inside ``mask``) that are saturated red: hue within 15 degrees of 0
    (pink, hue ~330 and pale, stays out)."""
    return saturated_hue_fraction(image, (345, 15), mask, min_value=0.45)


def cape_region(pose: Any, size: int | None = None) -> np.ndarray:
    """Boolean mask of where a cape hangs for this pose (its whole outline, body included)."""
    def draw(d: Any, f: Figure) -> None:
        cape = f.cape()
        if cape:
            d.polygon(cape, fill=255)

    return _mask(pose, *_canvas(pose, size), draw)


def neck_region(pose: Any, size: int | None = None) -> np.ndarray:
    """Boolean mask around the neck and collar, where a scarf is drawn."""
    def draw(d: Any, f: Figure) -> None:
        if f.ok[1]:
            disc(d, f.p[1], 0.5 * f.torso, 255)

    return _mask(pose, *_canvas(pose, size), draw)
