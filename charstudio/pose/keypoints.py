"""Keypoint layouts: the COCO-18 body, hands and face, and the check every keypoint array passes.

A leaf of the pose package: `skeleton` (the Pose) and `pose_json` (reading and writing JSON)
both build on it, so neither needs the other's internals.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from charstudio.errors import ConfigError

COCO18_NAMES: tuple[str, ...] = (
    "nose", "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
N_BODY, N_HAND, N_FACE = 18, 21, 70

# BODY_25 has a mid-hip point (8) and six foot points (19-24) that COCO-18 lacks.
BODY25_TO_COCO18: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)

# The optional parts: (Pose field, OpenPose / editor JSON key, number of points).
EXTRA_PARTS: tuple[tuple[str, str, int], ...] = (
    ("hand_left", "hand_left_keypoints_2d", N_HAND),
    ("hand_right", "hand_right_keypoints_2d", N_HAND),
    ("face", "face_keypoints_2d", N_FACE),
)


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for one-line messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_points(pts: Any, n: int, field: str) -> np.ndarray:
    """An (n, 3) float copy of ``pts``, refusing other shapes and NaN; missing points become 0, 0, 0."""
    arr = np.array(pts, dtype=np.float64)  # always a copy: Poses never share arrays
    if arr.shape != (n, 3):
        raise ConfigError(field, f"array of shape {arr.shape}", f"shape ({n}, 3): {n} points x (x, y, confidence)")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        label = COCO18_NAMES[i] if n == N_BODY else str(i)
        raise ConfigError(f"{field}[{label}]", tuple(arr[i].tolist()),
                          "finite numbers; mark a missing point with confidence 0 (x=0, y=0, c=0) instead of NaN")
    # Missing points are stored as exactly 0, 0, 0 so that equality and JSON are canonical.
    arr[arr[:, 2] <= 0] = 0.0
    return arr
