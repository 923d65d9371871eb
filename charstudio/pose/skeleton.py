"""The Pose: COCO-18 body keypoints (plus hands and face) in pixels of a canvas, read from
OpenPose and pose-editor JSON, moved, mirrored and fitted, and written in the editor format."""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from charstudio.errors import ConfigError
from charstudio.limits import check_canvas

from .detect import detect_keypoints
from ..validation import check_choice
from .drawing import POSE_LINES, draw_body, draw_face, draw_hand, limb_scale
from .keypoints import COCO18_NAMES, N_BODY, N_FACE, N_HAND, as_points
from .pose_json import pose_to_dict, read_json_source, read_pose_dict

log = logging.getLogger(__name__)


# Left/right pairs; mirroring swaps them. Each table is an involution (applying it twice is
# the identity), which is what makes mirror().mirror() the identity.
_BODY_SWAP_PAIRS = ((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (14, 15), (16, 17))
# The 70 face points are the 68 iBUG landmarks plus the two pupils (68 right, 69 left).
_FACE_SWAP_PAIRS = (
    *((i, 16 - i) for i in range(8)),  # jaw line
    *((17 + i, 26 - i) for i in range(5)),  # eyebrows
    *((31 + i, 35 - i) for i in range(2)),  # nostrils
    (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),  # eyes
    (48, 54), (49, 53), (50, 52), (55, 59), (56, 58),  # outer lip
    (60, 64), (61, 63), (65, 67),  # inner lip
    (68, 69),  # pupils
)


def _permutation(n: int, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    perm = np.arange(n)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


_BODY_MIRROR = _permutation(N_BODY, _BODY_SWAP_PAIRS)
# Body points on the face (nose, right eye, left eye): hidden in a view from behind.
_FACE_ON_BODY = (0, 14, 15)
_FACE_MIRROR = _permutation(N_FACE, _FACE_SWAP_PAIRS)
# Points are kept within [0, size - _EDGE] so int() in the renderer always lands on a pixel.
_EDGE = 1e-3
CANVAS_EDGE = _EDGE  # public: the pose editor keeps points within [0, size - CANVAS_EDGE] too


PoseLike = Union["Pose", str, Path, dict, list]


@dataclass(eq=False)
class Pose:
    """One person's OpenPose keypoints in pixels of a ``canvas_width`` x ``canvas_height`` canvas.

    ``body`` is an (18, 3) array of (x, y, confidence) in COCO-18 order; ``hand_left`` and
    ``hand_right`` are (21, 3) and ``face`` is (70, 3), or None when absent. Confidence 0
    marks a missing point. Operations return new Poses; a Pose is never changed in place.
    """

    body: np.ndarray
    canvas_width: int
    canvas_height: int
    hand_left: np.ndarray | None = None
    hand_right: np.ndarray | None = None
    face: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("canvas_width", "canvas_height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(name, value, "a positive whole number of pixels")
            setattr(self, name, int(value))
        self.body = as_points(self.body, N_BODY, "pose_keypoints_2d")
        self.hand_left = None if self.hand_left is None else as_points(self.hand_left, N_HAND, "hand_left_keypoints_2d")
        self.hand_right = None if self.hand_right is None else as_points(self.hand_right, N_HAND, "hand_right_keypoints_2d")
        self.face = None if self.face is None else as_points(self.face, N_FACE, "face_keypoints_2d")
        self._clip_to_canvas()

    # -- small helpers --------------------------------------------------------------------
    def _parts(self) -> dict[str, np.ndarray | None]:
        return {"body": self.body, "hand_left": self.hand_left, "hand_right": self.hand_right, "face": self.face}

    def _clip_to_canvas(self) -> None:
        # Clip to the last pixel centre so that int() in the renderer stays inside the image.
        max_x, max_y = self.canvas_width - _EDGE, self.canvas_height - _EDGE
        outside: list[str] = []
        for part, pts in self._parts().items():
            if pts is None:
                continue
            present = pts[:, 2] > 0
            bad = present & ((pts[:, 0] < 0) | (pts[:, 0] > max_x) | (pts[:, 1] < 0) | (pts[:, 1] > max_y))
            if bad.any():
                names = COCO18_NAMES if part == "body" else None
                for i in np.flatnonzero(bad):
                    label = names[i] if names else f"{part}[{i}]"
                    outside.append(f"{label}=({pts[i, 0]:.1f}, {pts[i, 1]:.1f})")
                pts[bad, 0] = np.clip(pts[bad, 0], 0.0, max_x)
                pts[bad, 1] = np.clip(pts[bad, 1], 0.0, max_y)
        if outside:
            message = (
                f"pose has {len(outside)} keypoint(s) outside its {self.canvas_width}x{self.canvas_height} "
                f"canvas, clipped to the border: {', '.join(outside[:6])}{' ...' if len(outside) > 6 else ''}"
            )
            log.warning(message)
            warnings.warn(message, UserWarning, stacklevel=3)

    def _map(self, fn) -> dict[str, np.ndarray | None]:
        """Apply fn(xy) -> xy to every present point of every part; missing points stay 0,0,0."""
        out: dict[str, np.ndarray | None] = {}
        for part, pts in self._parts().items():
            if pts is None:
                out[part] = None
                continue
            new = pts.copy()
            present = new[:, 2] > 0
            new[present, :2] = fn(new[present, :2])
            out[part] = new
        return out

    @property
    def present(self) -> np.ndarray:
        """Boolean mask of the body keypoints that are present."""
        return self.body[:, 2] > 0

    @property
    def is_empty(self) -> bool:
        """Whether no keypoint at all (body, hands, face) is present."""
        return not any(bool((p[:, 2] > 0).any()) for p in self._parts().values() if p is not None)

    def require_keypoints(self, name: Any = "no keypoints") -> None:
        """Refuse an empty pose (``name`` says which): it draws a black control image, which
        steers nothing, so a picture "in that pose" would silently be in none."""
        if self.is_empty:
            raise ConfigError("pose", name, "it has no keypoints, so it would steer nothing: give a pose with "
                              "at least one present keypoint")

    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of all present points (body, hands, face)."""
        pts = np.concatenate([p[p[:, 2] > 0, :2] for p in self._parts().values() if p is not None])
        if len(pts) == 0:
            raise ConfigError("pose", "no keypoints", "a pose with at least one present keypoint")
        return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())

    def copy(self) -> Pose:
        """A deep copy."""
        return Pose(canvas_width=self.canvas_width, canvas_height=self.canvas_height,
                    **{k: None if v is None else v.copy() for k, v in self._parts().items()})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pose):
            return NotImplemented
        return self.isclose(other, atol=0.0)

    def isclose(self, other: Pose, atol: float = 1e-6) -> bool:
        """Same canvas, same present points, coordinates within ``atol`` pixels."""
        if (self.canvas_width, self.canvas_height) != (other.canvas_width, other.canvas_height):
            return False
        for a, b in zip(self._parts().values(), other._parts().values()):
            if (a is None) != (b is None):
                return False
            if a is not None and not np.allclose(a, b, atol=atol, rtol=0.0):
                return False
        return True

    def __repr__(self) -> str:
        extras = [k for k in ("hand_left", "hand_right", "face") if getattr(self, k) is not None]
        return (f"Pose({int(self.present.sum())}/18 body points, canvas {self.canvas_width}x{self.canvas_height}"
                f"{', ' + ', '.join(extras) if extras else ''})")

    # -- geometry -------------------------------------------------------------------------
    def translate(self, dx: float, dy: float) -> Pose:
        """Move every point by (dx, dy) pixels; points pushed off the canvas are clipped (warned)."""
        shift = np.array([dx, dy], dtype=np.float64)
        return Pose(canvas_width=self.canvas_width, canvas_height=self.canvas_height, **self._map(lambda xy: xy + shift))

    def scale(self, factor: float, origin: tuple[float, float] | None = None) -> Pose:
        """Scale the figure by ``factor`` about ``origin`` (default: the centre of its bounding box).

        The canvas keeps its size; use `fit` or `resize` to change the canvas.
        """
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise ConfigError("factor", factor, "a positive finite number, e.g. 0.8 or 1.25")
        if origin is None:
            x0, y0, x1, y1 = self.bbox()
            origin = ((x0 + x1) / 2, (y0 + y1) / 2)
        o = np.array(origin, dtype=np.float64)
        return Pose(canvas_width=self.canvas_width, canvas_height=self.canvas_height,
                    **self._map(lambda xy: (xy - o) * factor + o))

    def resize(self, width: int, height: int) -> Pose:
        """Stretch the pose with its canvas to ``width`` x ``height`` (aspect ratio not kept)."""
        _check_size(width, height)
        s = np.array([width / self.canvas_width, height / self.canvas_height])
        return Pose(canvas_width=width, canvas_height=height, **self._map(lambda xy: xy * s))

    def mirror(self) -> Pose:
        """Flip horizontally. Left and right keypoints swap, so the person's right hand stays
        labelled "right" in the new picture (where it is now on the other side)."""
        w = self.canvas_width

        def flip(pts: np.ndarray | None, perm: np.ndarray | None) -> np.ndarray | None:
            if pts is None:
                return None
            new = pts.copy()
            present = new[:, 2] > 0
            # Reflect within the clipping range [0, w - 1e-3] so that mirroring maps the valid
            # range onto itself and twice is the identity even for points on the border.
            new[present, 0] = (w - _EDGE) - new[present, 0]
            return new if perm is None else new[perm]

        return Pose(
            body=flip(self.body, _BODY_MIRROR),
            # The person's left hand becomes their right hand.
            hand_left=flip(self.hand_right, None),
            hand_right=flip(self.hand_left, None),
            face=flip(self.face, _FACE_MIRROR),
            canvas_width=self.canvas_width,
            canvas_height=self.canvas_height,
        )

    def fit(self, width: int, height: int) -> Pose:
        """Place this pose's canvas into a ``width`` x ``height`` canvas: scaled uniformly to fit
        (aspect ratio kept), centred, with empty bands (letterbox) on the spare sides."""
        _check_size(width, height)
        if (width, height) == (self.canvas_width, self.canvas_height):
            return self.copy()
        s = min(width / self.canvas_width, height / self.canvas_height)
        offset = np.array([(width - self.canvas_width * s) / 2, (height - self.canvas_height * s) / 2])
        return Pose(canvas_width=width, canvas_height=height, **self._map(lambda xy: xy * s + offset))

    def back_view(self, axis: float | None = None) -> Pose:
        """The same pose seen from behind: the figure turned half round about a vertical axis.

        Every point is reflected about the vertical line x = ``axis`` (default: the neck's x;
        without a neck, the middle of the shoulders or hips, else of the body's points). Unlike
        `mirror`, the labels stay: the person's right hand, on the viewer's left from the front,
        is on the viewer's right from behind, still labelled right, and each hand keeps its own
        points. The face (nose, eyes and the 70 face points) is hidden and dropped; the ears stay.

        This is the turn for views that show both sides of the body (front <-> back). A profile
        turned round would keep the points of its now far side: use `mirror` for the other
        profile. Points turned off the canvas are clipped (with a warning), as in `translate`.
        """
        if axis is None:
            axis = self._body_axis()
        elif not (isinstance(axis, (int, float, np.integer, np.floating)) and math.isfinite(axis)):
            raise ConfigError("axis", axis, "an x position in pixels, or None for the neck's")
        x2 = 2.0 * float(axis)

        def turn(pts: np.ndarray | None) -> np.ndarray | None:
            if pts is None:
                return None
            new = pts.copy()
            present = new[:, 2] > 0
            new[present, 0] = x2 - new[present, 0]
            return new

        body = turn(self.body)
        body[list(_FACE_ON_BODY)] = 0.0  # nose and eyes face away; missing points are 0, 0, 0
        return Pose(body=body, hand_left=turn(self.hand_left), hand_right=turn(self.hand_right), face=None,
                    canvas_width=self.canvas_width, canvas_height=self.canvas_height)

    def _body_axis(self) -> float:
        """The x of the body's vertical axis: the neck, else mid-shoulders or mid-hips, else the
        middle of the body points."""
        ok = self.present
        if ok[1]:
            return float(self.body[1, 0])
        for a, b in ((2, 5), (8, 11)):
            if ok[a] and ok[b]:
                return float(self.body[a, 0] + self.body[b, 0]) / 2
        if not ok.any():
            raise ConfigError("pose", "no body keypoints", "a pose with body keypoints to turn round")
        xs = self.body[ok, 0]
        return float(xs.min() + xs.max()) / 2

    def crop(self, box: Sequence[float]) -> Pose:
        """The part of the pose inside ``box`` = (left, top, right, bottom) in canvas pixels, as a
        pose on a canvas of the box's size. Points outside the box are dropped (confidence 0),
        not clipped: a wrist cropped out of the picture is not in it. The box may reach past
        the canvas (the new canvas is then partly empty)."""
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            raise ConfigError("box", box, "(left, top, right, bottom) in pixels") from None
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 - x0 < 1 or y1 - y0 < 1:
            raise ConfigError("box", box, "(left, top, right, bottom) with right >= left + 1 and bottom >= top + 1")
        width, height = max(1, int(round(x1 - x0))), max(1, int(round(y1 - y0)))
        _check_size(width, height)
        out = self._map(lambda xy: xy - np.array([x0, y0]))
        for new in out.values():
            if new is None:
                continue
            present = new[:, 2] > 0
            inside = (new[:, 0] >= 0) & (new[:, 0] < width) & (new[:, 1] >= 0) & (new[:, 1] < height)
            new[present & ~inside] = 0.0
            kept = present & inside
            new[kept, 0] = np.minimum(new[kept, 0], width - _EDGE)
            new[kept, 1] = np.minimum(new[kept, 1], height - _EDGE)
        return Pose(canvas_width=width, canvas_height=height, **out)

    def portrait_box(self, aspect: float = 1.0, down_to: str = "chest") -> tuple[float, float, float, float]:
        """A box (left, top, right, bottom) in canvas pixels around the head and shoulders
        (``down_to="chest"``) or the upper body down to the hips (``"hips"``), ``aspect`` =
        width / height.

        It is sized from the distance d between the neck and the head's points (nose, eyes,
        ears): from 1.9 d above the highest head point (room for hair, big anime heads and
        hats) to 1.5 d below the neck (or 0.35 d below the hips), at least as wide as the
        shoulders plus d. It is moved inside the canvas, and shrunk about the head if it is
        larger than the canvas.
        """
        check_choice("down_to", down_to, ("chest", "hips"))
        if isinstance(aspect, bool) or not isinstance(aspect, (int, float)) or not (math.isfinite(aspect) and aspect > 0):
            raise ConfigError("aspect", aspect, "a positive width / height ratio, e.g. 1.0 or 0.75")
        ok, p = self.present, self.body[:, :2]
        head = [i for i in (0, 14, 15, 16, 17) if ok[i]]
        if not ok[1] or not head:
            raise ConfigError("pose", repr(self), "a pose with a neck and a nose, eye or ear to frame a portrait")
        neck, head_pts = p[1], p[head]
        d = max(float(np.linalg.norm(head_pts.mean(axis=0) - neck)), 1.0)
        top = float(head_pts[:, 1].min()) - 1.9 * d
        if down_to == "hips" and (ok[8] or ok[11]):
            bottom = float(max(p[i, 1] for i in (8, 11) if ok[i])) + 0.35 * d
        else:
            bottom = float(neck[1]) + (1.5 if down_to == "chest" else 4.0) * d
        min_width = (abs(float(p[5, 0] - p[2, 0])) if ok[2] and ok[5] else 0.0) + d
        cx = (float(head_pts[:, 0].mean()) + float(neck[0])) / 2
        height = bottom - top
        width = max(min_width, height * aspect)
        height = width / aspect
        # Larger than the canvas: the largest box of this aspect that fits, about the head.
        scale = min(1.0, self.canvas_width / width, self.canvas_height / height)
        width, height = width * scale, height * scale
        x0 = min(max(cx - width / 2, 0.0), self.canvas_width - width)
        y0 = min(max(top if scale == 1.0 else float(head_pts[:, 1].mean()) - height / 2, 0.0),
                 self.canvas_height - height)
        return x0, y0, x0 + width, y0 + height

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The sd-webui-openpose-editor / ComfyUI JSON for this pose (pixels, one person)."""
        return pose_to_dict(self.canvas_width, self.canvas_height, self._parts())

    def to_json(self) -> str:
        """`to_dict` as a JSON string."""
        return json.dumps(self.to_dict())

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the editor JSON to ``path`` atomically; refuses to replace a file unless ``overwrite``."""
        from charstudio.io_utils import atomic_write

        text = self.to_json()
        return Path(atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"),
                                 overwrite=overwrite))

    @classmethod
    def from_dict(
        cls,
        data: dict | list,
        *,
        person: int | None = None,
        frame: int | None = None,
        canvas_width: int | None = None,
        canvas_height: int | None = None,
        normalized: bool | None = None,
    ) -> Pose:
        """Read OpenPose output or pose-editor JSON (see the module docstring for the rules).

        ``person`` chooses among several people (required when there are several), ``frame``
        among several frames (default: the first). ``canvas_width``/``canvas_height`` override or
        supply the canvas size.
        """
        parts, width, height = read_pose_dict(data, person=person, frame=frame, canvas_width=canvas_width,
                                              canvas_height=canvas_height, normalized=normalized)
        return cls(canvas_width=width, canvas_height=height, **parts)

    @classmethod
    def from_json(cls, source: str | Path, **kwargs: Any) -> Pose:
        """Read a pose from a JSON file path or a JSON string; keyword arguments as `from_dict`."""
        return cls.from_dict(read_json_source(source), **kwargs)

    # -- rendering ------------------------------------------------------------------------
    def render(self, width: int | None = None, height: int | None = None, *, hands: bool = True,
               face: bool = True, lines: str = "standard"):
        """Draw the OpenPose control image (black background, standard colours and limb order).

        With ``width``/``height`` the pose is first fitted (letterboxed) into that size; giving
        only one keeps the canvas aspect ratio. ``lines="thick"`` draws the body as xinsir's SDXL
        ControlNets ask (wider with the picture's size; `drawing.limb_scale`). Returns a PIL RGB image.
        """
        from PIL import Image

        pose = self
        if width is not None or height is not None:
            if width is None:
                width = max(1, round(height * self.canvas_width / self.canvas_height))
            if height is None:
                height = max(1, round(width * self.canvas_height / self.canvas_width))
            pose = self.fit(width, height)
        _check_size(pose.canvas_width, pose.canvas_height)  # before allocating it
        pose.require_keypoints()
        canvas = np.zeros((pose.canvas_height, pose.canvas_width, 3), dtype=np.uint8)
        check_choice("lines", lines, POSE_LINES)
        draw_body(canvas, pose.body, limb_scale(pose.canvas_width, pose.canvas_height, lines))
        if hands:
            for hand in (pose.hand_left, pose.hand_right):
                if hand is not None:
                    draw_hand(canvas, hand)
        if face and pose.face is not None:
            draw_face(canvas, pose.face)
        return Image.fromarray(canvas, "RGB")

    # -- detection ------------------------------------------------------------------------
    @classmethod
    def from_image(
        cls,
        image,
        detector: Any = None,
        weights: str | Path | None = None,
        *,
        person: int | None = None,
        hands: bool = False,
        face: bool = False,
    ) -> Pose:
        """Detect the pose of a person in ``image`` with controlnet-aux's OpenPose detector.

        ``detector`` is a ready `controlnet_aux.OpenposeDetector` (or anything with its
        ``detect_poses``). Otherwise one is built from ``weights``: a local folder holding
        ``body_pose_model.pth`` (and ``hand_pose_model.pth`` / ``facenet.pth`` when ``hands`` /
        ``face``), or a hub repo id (default ``lllyasviel/Annotators``). With several people the
        most confident one is returned unless ``person`` picks one (people sorted by score).
        """
        parts, width, height = detect_keypoints(image, detector, weights, person=person, hands=hands, face=face)
        return cls(canvas_width=width, canvas_height=height, **parts)


def _check_size(width: Any, height: Any) -> None:
    """A canvas of 1..MAX_CANVAS whole pixels a side (`limits.check_canvas`), numpy ints too."""
    check_canvas(*(int(v) if isinstance(v, np.integer) else v for v in (width, height)))
