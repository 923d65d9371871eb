"""Measuring pictures of the world: where the hair, cape, neck and figure are for a pose, and
the colours found there (for the behaviour tests, the evaluation and the training report)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from .held_out import boot_shapes
from .world import HAIR_COLOURS, RGB, SUPERSAMPLE, Figure, disc, limb


def _mask(pose: Any, width: int, height: int, draw: Any) -> np.ndarray:
    """A boolean mask drawn by ``draw(ImageDraw, Figure)`` on the pose fitted to width x height."""
    from PIL import Image, ImageDraw

    pose = pose.fit(width, height)
    img = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    draw(ImageDraw.Draw(img), Figure(pose, SUPERSAMPLE))
    return np.asarray(img.resize((width, height), Image.BOX)) > 127


def _canvas(pose: Any, size: int | tuple[int, int] | None) -> tuple[int, int]:
    """A square ``size``, a (width, height) pair, or the pose's own canvas."""
    if isinstance(size, tuple):
        return int(size[0]), int(size[1])
    return (size, size) if size is not None else (int(pose.canvas_width), int(pose.canvas_height))


def hair_region(pose: Any, size: int | tuple[int, int] | None = None) -> np.ndarray:
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


def boots_region(pose: Any, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Boolean mask of where boots are drawn for this pose (`held_out.boot_shapes`: the lower shins
    and the feet, legs included); empty when the pose shows no ankle."""
    def draw(d: Any, f: Figure) -> None:
        for shaft, width in boot_shapes(f):
            limb(d, shaft, width, 255)
            disc(d, shaft[-1], 0.8 * f.leg_w, 255)

    return _mask(pose, *_canvas(pose, size), draw)


def neck_region(pose: Any, size: int | None = None) -> np.ndarray:
    """Boolean mask around the neck and collar, where a scarf is drawn."""
    def draw(d: Any, f: Figure) -> None:
        if f.ok[1]:
            disc(d, f.p[1], 0.5 * f.torso, 255)

    return _mask(pose, *_canvas(pose, size), draw)


# Regions by the person's own side (COCO-18 labels): an eye, an ear, the upper arm, the whole arm
# with the hand, the leg. Each is (keypoints it needs, how it is drawn), for "left"; "right" swaps.
SIDE_KEYPOINTS = {"right": {"eye": 14, "ear": 16, "shoulder": 2, "elbow": 3, "wrist": 4, "hip": 8, "knee": 9, "ankle": 10},
                  "left": {"eye": 15, "ear": 17, "shoulder": 5, "elbow": 6, "wrist": 7, "hip": 11, "knee": 12, "ankle": 13}}
SIDE_REGIONS = ("eye", "ear", "upper_arm", "arm", "leg", "body")


def has_face(pose: Any) -> bool:
    """True when the pose shows a face (the nose or an eye): it is not seen from behind."""
    ok = np.asarray(pose.body)[:, 2] > 0
    return bool(ok[0] or ok[14] or ok[15])


def side_region(pose: Any, side: str, kind: str, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Boolean mask of one side's ``kind`` of region (`SIDE_REGIONS`) on the person's ``side``
    ("left" or "right", the pose's labels); empty when its keypoints are missing. "body" is the
    arm and the leg together."""
    if side not in SIDE_KEYPOINTS:
        raise ConfigError("side", side, "'left' or 'right'")
    if kind not in SIDE_REGIONS:
        raise ConfigError("region", kind, f"one of {', '.join(map(repr, SIDE_REGIONS))}")
    k = SIDE_KEYPOINTS[side]

    def chain(d: Any, f: Figure, names: tuple[str, ...], width: float) -> None:
        pts = [f.p[k[n]] for n in names if f.ok[k[n]]]
        if len(pts) >= 2:
            limb(d, pts, width, 255)

    def draw(d: Any, f: Figure) -> None:
        if kind in ("eye", "ear") and f.ok[k[kind]]:
            disc(d, f.p[k[kind]], (0.1 if kind == "eye" else 0.2) * f.torso, 255)
        if kind == "upper_arm":
            chain(d, f, ("shoulder", "elbow"), 1.4 * f.arm_w)
        if kind in ("arm", "body"):
            chain(d, f, ("shoulder", "elbow", "wrist"), 1.4 * f.arm_w)
            if f.ok[k["wrist"]]:
                disc(d, f.p[k["wrist"]], 0.35 * f.torso, 255)  # the hand and what it holds
        if kind in ("leg", "body"):
            chain(d, f, ("hip", "knee", "ankle"), 1.3 * f.leg_w)

    return _mask(pose, *_canvas(pose, size), draw)


def eye_region(pose: Any, size: int | tuple[int, int] | None = None, radius: float = 0.075) -> list[np.ndarray]:
    """One boolean mask per eye the pose shows (right, then left): a disc of ``radius`` torso
    lengths around the eye keypoint (0.075 is the drawn eye)."""
    masks = []
    for i in (14, 15):
        def draw(d: Any, f: Figure, i: int = i) -> None:
            if f.ok[i]:
                disc(d, f.p[i], radius * f.torso, 255)
        if np.asarray(pose.body)[i, 2] > 0:
            masks.append(_mask(pose, *_canvas(pose, size), draw))
    return masks


def head_region(pose: Any, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Boolean mask of the head disc (where a face is drawn, hair cap included)."""
    def draw(d: Any, f: Figure) -> None:
        disc(d, f.head, f.head_r, 255)

    return _mask(pose, *_canvas(pose, size), draw)


def torso_region(pose: Any, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Boolean mask of the torso's two sides, where the outfit's colour is: from 30% to 80% of the
    way from the shoulders to the hips (below a scarf, above a belt), inside the arms and beside
    the midline (where buttons, a tie or an armour's plate run). Empty without both shoulders and
    both hips, or seen side-on (shoulders closer than 0.35 torso lengths: the arm hides the torso)."""
    def draw(d: Any, f: Figure) -> None:
        if f.has(2, 5, 8, 11) and np.linalg.norm(f.p[5] - f.p[2]) >= 0.35 * f.torso:
            def at(t: float, u: float) -> tuple[float, float]:  # t down the torso, u across it (0 right, 1 left)
                top, bottom = f.p[2] + (f.p[5] - f.p[2]) * u, f.p[8] + (f.p[11] - f.p[8]) * u
                q = top + (bottom - top) * t
                return float(q[0]), float(q[1])
            for u0, u1 in ((0.12, 0.36), (0.64, 0.88)):
                d.polygon([at(0.3, u0), at(0.3, u1), at(0.8, u1), at(0.8, u0)], fill=255)

    return _mask(pose, *_canvas(pose, size), draw)
