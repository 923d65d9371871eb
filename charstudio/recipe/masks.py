"""The masks a recipe records, for inpainting and the detail pass: boxes, named body regions of a
pose, and mask pictures stored in the recipe (a 1-bit PNG, base64, with its digest).

A box is ``(left, top, right, bottom)`` in pixels, right and bottom exclusive. A named region
(``face``, ``hands``, ``torso``, ``legs``, ``hair``) is one box (two for the hands) placed from
the pose's keypoints (COCO-18, plus hand and face points when the pose has them), with padding.

This is the fields' geometry (no torch): the recipe's schemas check with it. Turning masks into
pixels (soft seams, pasting, latent cells) is `charstudio.workflows.masks`.
"""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError

REGIONS = ("face", "hands", "torso", "legs", "hair")
DEFAULT_PADDING = 0.15  # a region's box grows by this share of its longer side, on each side
DEFAULT_SEAM = 4  # pixels over which a paste fades from the redrawn picture to the original

Box = tuple[int, int, int, int]


# -- boxes ---------------------------------------------------------------------------------
def parse_box(value: Any, field: str = "mask") -> Box:
    """A box from ``(left, top, right, bottom)`` or the text ``"x0,y0,x1,y1"`` (not checked
    against a picture; see `check_box`)."""
    if isinstance(value, str):
        parts = value.replace(" ", "").split(",")
        try:
            value = [int(float(p)) for p in parts]
        except ValueError:
            raise ConfigError(field, value, "a box 'left,top,right,bottom' in pixels, e.g. 8,4,40,28") from None
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(isinstance(v, (int, np.integer, float)) and not isinstance(v, bool) for v in value)):
        raise ConfigError(field, value, "a box (left, top, right, bottom) in pixels, e.g. (8, 4, 40, 28)")
    x0, y0, x1, y1 = (int(round(float(v))) for v in value)
    return x0, y0, x1, y1


def check_box(box: Any, width: int, height: int, field: str = "mask") -> Box:
    """A box that lies in a ``width`` x ``height`` picture and has pixels (else a ConfigError)."""
    x0, y0, x1, y1 = parse_box(box, field)
    if x1 <= x0 or y1 <= y0:
        raise ConfigError(field, [x0, y0, x1, y1], "a box (left, top, right, bottom) with right > left and "
                                                   "bottom > top")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ConfigError(field, [x0, y0, x1, y1], f"a box inside the {width}x{height} picture: 0 <= left < right "
                                                   f"<= {width}, 0 <= top < bottom <= {height}")
    return x0, y0, x1, y1


def pad_box(box: Sequence[float], padding: float, width: int, height: int, minimum: float = 2.0) -> Box:
    """Grow a box by ``padding`` times its longer side on each side (at least ``minimum`` pixels),
    rounded outwards and clipped to the picture."""
    x0, y0, x1, y1 = (float(v) for v in box)
    grow = max(padding * max(x1 - x0, y1 - y0), minimum)
    out = (int(np.floor(x0 - grow)), int(np.floor(y0 - grow)), int(np.ceil(x1 + grow)), int(np.ceil(y1 + grow)))
    return max(out[0], 0), max(out[1], 0), min(out[2], width), min(out[3], height)


# -- named regions of a pose ---------------------------------------------------------------
class _Body:
    """Sizes read from the body keypoints, as charstudio.mini's world draws a figure: the torso
    length (neck to mid-hip) sets the head's radius and the limbs' widths."""

    def __init__(self, pose: Any):
        body = np.asarray(pose.body, dtype=np.float64)
        self.p, self.ok = body[:, :2], body[:, 2] > 0
        hips = [self.p[i] for i in (8, 11) if self.ok[i]]
        if self.ok[1] and hips:
            torso = float(np.linalg.norm(np.mean(hips, axis=0) - self.p[1]))
        else:
            ys = self.p[self.ok, 1]
            torso = float(ys.max() - ys.min()) / 2.6 if len(ys) else 0.0
        self.torso = max(torso, 2.0)
        self.head_r = 0.42 * self.torso
        self.head: np.ndarray | None = None
        up = np.array([0.0, -1.0])
        if self.ok[0] and self.ok[1]:
            v = self.p[0] - self.p[1]
            n = float(np.linalg.norm(v))
            up = v / n if n > 1e-6 else up
            self.head = self.p[0] + 0.15 * self.torso * up
        elif self.ok[0]:
            self.head = self.p[0].copy()
        else:
            ears = [self.p[i] for i in (14, 15, 16, 17) if self.ok[i]]
            if ears:
                self.head = np.mean(ears, axis=0)
        self.up = up

    def points(self, idx: Sequence[int]) -> np.ndarray:
        return np.array([self.p[i] for i in idx if self.ok[i]]).reshape(-1, 2)


def _bounds(points: np.ndarray) -> tuple[float, float, float, float]:
    return float(points[:, 0].min()), float(points[:, 1].min()), float(points[:, 0].max()), float(points[:, 1].max())


def _present(points: Any) -> np.ndarray:
    if points is None:
        return np.zeros((0, 2))
    pts = np.asarray(points, dtype=np.float64)
    return pts[pts[:, 2] > 0, :2]


def _missing(field: str, region: str, what: str) -> ConfigError:
    return ConfigError(field, region, f"a region the picture's pose has: it has no {what}; choose another of "
                                      f"{', '.join(REGIONS)} or give a box")


def region_boxes(pose: Any, region: str, width: int, height: int, padding: float = DEFAULT_PADDING,
                 field: str = "mask") -> list[Box]:
    """The box(es) of a named body region (`REGIONS`) of ``pose`` fitted to ``width`` x ``height``:
    one box, or one per hand. A region the pose lacks (no wrists and no hand points for
    ``hands``) is a ConfigError naming ``field``."""
    if region not in REGIONS:
        raise ConfigError(field, region, f"one of {', '.join(REGIONS)}, a box 'left,top,right,bottom' or a mask picture")
    if (pose.canvas_width, pose.canvas_height) != (width, height):
        pose = pose.fit(width, height)
    raw = _REGION_BOXES["head" if region in ("face", "hair") else region](pose, _Body(pose), region, field)
    boxes = []
    for box in raw:
        padded = pad_box(box, padding, width, height)
        if padded[2] - padded[0] < 1 or padded[3] - padded[1] < 1:
            raise ConfigError(field, region, f"a region inside the {width}x{height} picture: the pose's {region} "
                                             "lies outside it")
        boxes.append(padded)
    return boxes


Raw = tuple[float, float, float, float]


def _head_boxes(pose: Any, body: "_Body", region: str, field: str) -> list[Raw]:
    face = _present(pose.face)
    if body.head is None and not len(face):
        raise _missing(field, region, "head keypoints (nose, eyes, ears or face points)")
    centre = body.head if body.head is not None else face.mean(axis=0)
    r = body.head_r * 1.05
    if region == "face":
        pts = np.array([centre - r, centre + r])
        return [_bounds(np.concatenate([pts, face]) if len(face) else pts)]
    # hair: the top of the head, from above the crown down to eye level
    right = np.array([-body.up[1], body.up[0]])
    return [_bounds(np.array([centre + r * (s * right + u * body.up) for s in (-1.0, 1.0) for u in (1.0, -0.1)]))]


def _hand_boxes(pose: Any, body: "_Body", region: str, field: str) -> list[Raw]:
    raw = []
    for wrist, elbow, hand in ((4, 3, pose.hand_right), (7, 6, pose.hand_left)):
        points = _present(hand)
        if len(points):
            raw.append(_bounds(points))
        elif body.ok[wrist]:
            tip = body.p[wrist]
            forearm = body.p[wrist] - body.p[elbow] if body.ok[elbow] else np.zeros(2)
            centre = tip + 0.3 * forearm
            half = max(0.3 * body.torso, 0.35 * float(np.linalg.norm(forearm)))
            raw.append(_bounds(np.array([centre - half, centre + half])))
    if not raw:
        raise _missing(field, region, "hands (no wrist or hand keypoints)")
    return raw


def _torso_boxes(pose: Any, body: "_Body", region: str, field: str) -> list[Raw]:
    points = body.points((1, 2, 5, 8, 11))
    if len(points) < 3:
        raise _missing(field, region, "torso (neck, shoulders, hips)")
    x0, y0, x1, y1 = _bounds(points)
    arm = 0.26 * body.torso
    return [(x0 - arm, y0, x1 + arm, y1)]


def _leg_boxes(pose: Any, body: "_Body", region: str, field: str) -> list[Raw]:
    points = body.points((8, 9, 10, 11, 12, 13))
    if not body.points((9, 10, 12, 13)).size or len(points) < 2:
        raise _missing(field, region, "legs (hips with knees or ankles)")
    x0, y0, x1, y1 = _bounds(points)
    leg = 0.3 * body.torso
    return [(x0 - leg, y0, x1 + leg, y1 + leg)]


_REGION_BOXES = {"head": _head_boxes, "hands": _hand_boxes, "torso": _torso_boxes, "legs": _leg_boxes}


def people(pose: Any) -> list[Any]:
    """The people of a pose: a `Pose`, a group of them (``.people``), or pose-editor JSON with one
    person or several."""
    from ..pose import Pose

    if isinstance(pose, Pose):
        return [pose]
    if hasattr(pose, "people") and not isinstance(pose, dict):
        return list(pose.people)
    if isinstance(pose, dict) and isinstance(pose.get("people"), list) and len(pose["people"]) > 1:
        return [Pose.from_dict(pose, person=i) for i in range(len(pose["people"]))]
    return [Pose.from_dict(pose)]


def pose_boxes(pose: Any, region: str, width: int, height: int, padding: float = DEFAULT_PADDING,
               field: str = "mask") -> list[Box]:
    """`region_boxes` for every person of ``pose`` (see `people`) who has the region; a
    ConfigError when nobody has it."""
    boxes: list[Box] = []
    error: ConfigError | None = None
    for person in people(pose):
        try:
            boxes += region_boxes(person, region, width, height, padding, field)
        except ConfigError as exc:
            if exc.field != field or exc.value != region:
                raise
            error = exc
    if not boxes and error is not None:
        raise error
    return boxes


# -- mask pictures -------------------------------------------------------------------------
def check_not_empty(mask: np.ndarray, field: str = "mask") -> np.ndarray:
    if not mask.any():
        raise ConfigError(field, "empty", "a mask with at least one white pixel (the part to redraw)")
    return mask


def encode_mask(mask: np.ndarray) -> str:
    """A boolean mask as a 1-bit PNG in base64 (how recipes store a picture mask)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").convert("1").save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_mask(text: str, field: str = "mask") -> np.ndarray:
    """The inverse of `encode_mask`."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(base64.b64decode(text.encode("ascii"), validate=True))) as im:
            return np.asarray(im.convert("L")) >= 128
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the same bad field
        raise ConfigError(field, str(text)[:40] + "...", "a base64 PNG mask as encode_mask writes it") from exc


def mask_sha256(mask: np.ndarray) -> str:
    """A digest of a boolean mask's shape and pixels."""
    return hashlib.sha256(f"{mask.shape[1]}x{mask.shape[0]}:".encode() + np.packbits(mask).tobytes()).hexdigest()
