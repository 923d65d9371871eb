"""Blending two OpenPose skeletons keypoint by keypoint (missing points stay missing)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .maths import check_t, frame_ts


def _keypoint_array(kp: Any, name: str) -> Any:
    """A (K, 3) float array [x, y, confidence] from a (K, 2)/(K, 3) array or OpenPose's flat list."""
    import numpy as np

    arr = np.asarray(kp, dtype=np.float64)
    if arr.ndim == 1 and arr.size % 3 == 0:
        arr = arr.reshape(-1, 3)  # OpenPose's flat [x, y, c, x, y, c, ...]
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise ConfigError(name, tuple(arr.shape), "keypoints as (K, 2) or (K, 3) [x, y, confidence]")
    if arr.shape[1] == 2:
        arr = np.concatenate([arr, np.ones((arr.shape[0], 1))], axis=1)
    return arr


def _missing(kp: Any) -> Any:
    import numpy as np

    return ~np.isfinite(kp[:, 0]) | ~np.isfinite(kp[:, 1]) | ~(kp[:, 2] > 0)


def interpolate_keypoints(a: Any, b: Any, t: float) -> Any:
    """Keypoints between two poses, as a (K, 3) array [x, y, confidence].

    Points present in both move in a straight line. A point missing in one pose (confidence 0
    or NaN) has nowhere sensible to move from, so it stays where it is known and is shown only
    on its own half of the sequence: it disappears (or appears) at t=0.5. Missing in both
    stays missing (all zeros).
    """
    import numpy as np

    t = check_t(t)
    ka, kb = _keypoint_array(a, "a"), _keypoint_array(b, "b")
    if ka.shape != kb.shape:
        raise ConfigError("b", tuple(kb.shape), f"must have as many keypoints as a {tuple(ka.shape)}")
    out = np.zeros_like(ka)
    ma, mb = _missing(ka), _missing(kb)
    both = ~ma & ~mb
    out[both] = (1.0 - t) * ka[both] + t * kb[both]
    if t < 0.5:
        out[~ma & mb] = ka[~ma & mb]
    else:
        out[ma & ~mb] = kb[ma & ~mb]
    return out


_POSE_PARTS = ("body", "hand_left", "hand_right", "face")


def interpolate_pose(a: Any, b: Any, t: float) -> Any:
    """A `charstudio.pose.Pose` between two Poses (body, hands and face), on a's canvas.

    b is fitted to a's canvas first when the canvases differ. A part (a hand, the face) that
    only one pose has follows the same rule as a single missing point.
    """
    from ..pose import Pose, load_pose

    t = check_t(t)
    pa = a if isinstance(a, Pose) else load_pose(a)
    pb = b if isinstance(b, Pose) else load_pose(b)
    if (pb.canvas_width, pb.canvas_height) != (pa.canvas_width, pa.canvas_height):
        pb = pb.fit(pa.canvas_width, pa.canvas_height)
    parts: dict[str, Any] = {}
    for name in _POSE_PARTS:
        xa, xb = getattr(pa, name), getattr(pb, name)
        if xa is None and xb is None:
            parts[name] = None
        elif xb is None:
            parts[name] = xa.copy() if t < 0.5 else None
        elif xa is None:
            parts[name] = xb.copy() if t >= 0.5 else None
        else:
            parts[name] = interpolate_keypoints(xa, xb, t)
    return Pose(canvas_width=pa.canvas_width, canvas_height=pa.canvas_height, **parts)


def pose_sequence(a: Any, b: Any, frames: int) -> list[Any]:
    """`frames` poses from a to b inclusive, keypoints interpolated linearly.

    Keypoint arrays give arrays; anything else (Pose, pose name, pose-editor dict, JSON path)
    gives `charstudio.pose.Pose` objects.
    """
    ts = frame_ts(frames)
    import numpy as np

    if isinstance(a, (np.ndarray, list, tuple)) and isinstance(b, (np.ndarray, list, tuple)):
        return [interpolate_keypoints(a, b, t) for t in ts]
    return [interpolate_pose(a, b, t) for t in ts]
