"""Pose JSON: reading OpenPose and pose-editor JSON into keypoint arrays, and writing the editor format.

The rules (frames, people, BODY_25, canvas size, normalised coordinates) are in the pose
package's docstring. These functions work on plain arrays and return them; `Pose.from_dict`,
`Pose.from_json` and `Pose.to_dict` wrap them, so this module never needs the Pose class.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from charstudio.errors import ConfigError

from .keypoints import BODY25_TO_COCO18, EXTRA_PARTS, N_BODY, as_points, short

log = logging.getLogger(__name__)

Parts = dict[str, "np.ndarray | None"]


def pose_to_dict(canvas_width: int, canvas_height: int, parts: Parts) -> dict[str, Any]:
    """The sd-webui-openpose-editor / ComfyUI JSON for one person (pixels); ``parts`` as `Pose._parts`."""
    person: dict[str, Any] = {"pose_keypoints_2d": _flat(parts["body"])}
    for part, key, _n in EXTRA_PARTS:
        if parts.get(part) is not None:
            person[key] = _flat(parts[part])
    return {"canvas_width": canvas_width, "canvas_height": canvas_height, "people": [person]}


def read_json_source(source: str | Path) -> Any:
    """The parsed JSON of a pose file path or a JSON string."""
    text: str
    if isinstance(source, Path) or not str(source).lstrip().startswith(("{", "[")):
        path = Path(source)
        if not path.is_file():
            raise ConfigError("pose", str(source), "an existing pose JSON file, a pose name, or a JSON string")
        from ..io_utils import read_text

        text = read_text(path, "pose file")
    else:
        text = str(source)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError("pose", str(source)[:80], f"valid JSON ({err})") from None


def read_pose_dict(
    data: dict | list,
    *,
    person: int | None = None,
    frame: int | None = None,
    canvas_width: int | None = None,
    canvas_height: int | None = None,
    normalized: bool | None = None,
) -> tuple[Parts, int, int]:
    """One person's keypoint arrays (``body``, ``hand_left``, ``hand_right``, ``face``) in pixels,
    and the canvas width and height, read from OpenPose output or pose-editor JSON."""
    # 1. Frames: the ComfyUI editor saves a list of per-frame dicts.
    data = _pick_frame(data, frame)
    # 2. The person.
    entry = _pick_person(data["people"], person)
    # 3. Keypoint arrays, BODY_25 reduced to COCO-18.
    parts = _read_parts(entry)
    # 4. Canvas size and coordinate units.
    present = np.concatenate([p[p[:, 2] > 0, :2] for p in parts.values() if p is not None])
    if normalized is None:
        normalized = bool(len(present)) and bool(np.all((present >= 0) & (present <= 1.0)))
    width, height = _canvas_size(data, entry, present, normalized, canvas_width, canvas_height)
    if normalized:
        scale = np.array([width, height], dtype=np.float64)
        for pts in parts.values():
            if pts is not None:
                pts[pts[:, 2] > 0, :2] *= scale
    return parts, width, height


def _pick_frame(data: Any, frame: int | None) -> dict:
    if isinstance(data, list):
        if not data:
            raise ConfigError("frames", [], "a list with at least one frame (a dict with 'people')")
        index = 0 if frame is None else frame
        if not isinstance(index, int) or not 0 <= index < len(data):
            raise ConfigError("frame", frame, f"an index from 0 to {len(data) - 1}; this JSON has {len(data)} frames")
        data = data[index]
    elif frame not in (None, 0):
        raise ConfigError("frame", frame, "0 or None; this JSON has a single frame")
    if not isinstance(data, dict) or "people" not in data:
        raise ConfigError("pose", short(data), "a dict with a 'people' list (OpenPose or pose-editor JSON)")
    return data


def _pick_person(people: Any, person: int | None) -> dict:
    if not isinstance(people, list) or not people:
        raise ConfigError("people", people, "at least one person; this pose JSON has no people")
    if person is None:
        if len(people) > 1:
            raise ConfigError("person", None,
                              f"an index from 0 to {len(people) - 1}: this pose JSON has {len(people)} people, choose one with person=")
        person = 0
    if isinstance(person, bool) or not isinstance(person, int) or not 0 <= person < len(people):
        raise ConfigError("person", person, f"an index from 0 to {len(people) - 1}; this pose JSON has {len(people)} people")
    entry = people[person]
    if not isinstance(entry, dict) or "pose_keypoints_2d" not in entry:
        raise ConfigError(f"people[{person}]", short(entry), "a dict with 'pose_keypoints_2d'")
    return entry


def _read_parts(entry: dict) -> Parts:
    body = _read_array(entry["pose_keypoints_2d"], "pose_keypoints_2d", {N_BODY: "COCO-18", 25: "BODY_25"})
    if len(body) == 25:
        body = body[list(BODY25_TO_COCO18)]
    parts: Parts = {"body": body}
    for part, key, n in EXTRA_PARTS:
        raw = entry.get(key)
        parts[part] = None if not raw else _read_array(raw, key, {n: f"{n} points"})
    return parts


def _canvas_size(data: dict, entry: dict, present: np.ndarray, normalized: bool,
                 canvas_width: int | None, canvas_height: int | None) -> tuple[int, int]:
    """The canvas: given, stored in the JSON, or (pixels only) inferred from the keypoints' extent."""
    width = canvas_width if canvas_width is not None else data.get("canvas_width")
    height = canvas_height if canvas_height is not None else data.get("canvas_height")
    if (width is None) != (height is None):
        raise ConfigError("canvas_width" if width is None else "canvas_height", None,
                          "both canvas_width and canvas_height, or neither")
    if width is None:
        if normalized:
            raise ConfigError("canvas_width", None,
                              "a canvas size: these coordinates are normalised to 0..1 and the JSON stores no canvas "
                              "size; pass canvas_width= and canvas_height= (the image size)")
        if not len(present):
            raise ConfigError("people", short(entry), "at least one present keypoint to infer a canvas size from")
        width = int(math.ceil(present[:, 0].max() * 1.1)) or 1
        height = int(math.ceil(present[:, 1].max() * 1.1)) or 1
        log.info("pose JSON has no canvas size; inferred %dx%d from the keypoints' extent "
                    "(pass canvas_width/canvas_height for the original image size)", width, height)
    return _whole_pixels("canvas_width", width), _whole_pixels("canvas_height", height)


def _whole_pixels(name: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, value, "a positive whole number of pixels")
    return int(value)


def _read_array(raw: Any, field: str, layouts: dict[int, str]) -> np.ndarray:
    """A flat [x, y, c, x, y, c, ...] list to an (n, 3) float array, checking length and NaN."""
    expected = " or ".join(f"{n * 3} numbers ({name}: {n} points x (x, y, confidence))" for n, name in layouts.items())
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(field, short(raw), f"a flat list of numbers: {expected}") from None
    if arr.ndim == 2 and arr.shape[1] == 3:
        arr = arr.reshape(-1)
    if arr.ndim != 1 or len(arr) % 3 or len(arr) // 3 not in layouts:
        raise ConfigError(field, f"{arr.size} numbers", expected)
    return as_points(arr.reshape(-1, 3), len(arr) // 3, field)


def _flat(pts: np.ndarray) -> list[float]:
    return [float(round(v, 3)) for v in pts.reshape(-1)]
