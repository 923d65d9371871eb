"""The poses shipped with charstudio, pose lookup by name, file or JSON, and where a
picture's pose file lives."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from charstudio.errors import ConfigError

from .skeleton import Pose, PoseLike

POSE_SUFFIX = ".pose.json"  # NAME.pose.json beside a picture NAME.png holds its pose


def pose_file(image: Path) -> Path:
    """Where the pose of picture ``NAME.png`` lives: ``NAME.pose.json`` beside it."""
    return image.with_name(image.stem + POSE_SUFFIX)


def _library_dir():
    from importlib import resources

    return resources.files("charstudio").joinpath("data", "poses")


def _normalise_name(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


def list_poses() -> list[str]:
    """Names of the poses shipped with charstudio, sorted."""
    return sorted(p.name[: -len(".json")] for p in _library_dir().iterdir() if p.name.endswith(".json"))


def load_pose(pose: PoseLike, **kwargs: Any) -> Pose:
    """A Pose from a Pose, a library name ("standing_front", "standing front"), a JSON file path,
    a JSON string, or a dict/list in OpenPose or pose-editor format. Keyword arguments go to
    `Pose.from_dict` (``person=``, ``frame=``, ``canvas_width=``, ...)."""
    if isinstance(pose, Pose):
        return pose.copy()
    if isinstance(pose, (dict, list)):
        return Pose.from_dict(pose, **kwargs)
    if isinstance(pose, Path):
        return Pose.from_json(pose, **kwargs)
    if not isinstance(pose, str):
        raise ConfigError("pose", type(pose).__name__, "a Pose, a pose name, a JSON file path, or a pose dict")
    text = pose.strip()
    if text.startswith(("{", "[")):
        return Pose.from_json(text, **kwargs)
    name = _normalise_name(text)
    known = list_poses()
    if name in known:
        data = json.loads((_library_dir() / f"{name}.json").read_text(encoding="utf-8"))
        return Pose.from_dict(data, **kwargs)
    if Path(text).is_file():
        return Pose.from_json(Path(text), **kwargs)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError("pose", pose, f"a pose name{hint} from: {', '.join(known)}; or a path to a pose JSON file")
