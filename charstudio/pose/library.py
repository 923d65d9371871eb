"""The pose library: the poses shipped with charstudio plus the user's own (saved by the pose
editor), pose lookup by name, file or JSON, and where a picture's pose file lives.

The user's poses are ``NAME.json`` files (pose-editor JSON, one or more people) in the folder named
by the environment variable ``CHARSTUDIO_POSE_DIR``, else ``~/.charstudio/poses``. A user's pose
of the same name as a shipped one hides it (as cards in $CHARSTUDIO_PROMPTS hide shipped cards).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from charstudio.errors import ConfigError

from .skeleton import Pose, PoseLike

log = logging.getLogger(__name__)

POSE_SUFFIX = ".pose.json"  # NAME.pose.json beside a picture NAME.png holds its pose
POSE_DIR_ENV = "CHARSTUDIO_POSE_DIR"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")


def pose_file(image: Path) -> Path:
    """Where the pose of picture ``NAME.png`` lives: ``NAME.pose.json`` beside it."""
    return image.with_name(image.stem + POSE_SUFFIX)


def _library_dir():
    from importlib import resources

    return resources.files("charstudio").joinpath("data", "poses")


def _normalise_name(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


def user_pose_dir() -> Path:
    """The folder of the user's own poses: $CHARSTUDIO_POSE_DIR, else ``~/.charstudio/poses``
    (it need not exist yet; saving creates it)."""
    env = os.environ.get(POSE_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".charstudio" / "poses"


def _json_names(folder: Any) -> dict[str, Any]:
    """name -> file of the ``*.json`` files in ``folder`` (a Path or a package resource)."""
    try:
        return {p.name[: -len(".json")]: p for p in folder.iterdir()
                if p.name.endswith(".json") and not p.name.startswith(".") and p.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return {}


def shipped_poses() -> list[str]:
    """Names of the poses shipped with charstudio, sorted."""
    return sorted(_json_names(_library_dir()))


def list_poses() -> list[str]:
    """Names of the library's poses, sorted: the shipped ones and the user's (`user_pose_dir`)."""
    return sorted(set(_json_names(_library_dir())) | set(_json_names(user_pose_dir())))


def library_file(name: str) -> Any:
    """The file of library pose ``name`` (the user's copy first), or None when there is none."""
    key = _normalise_name(name)
    return _json_names(user_pose_dir()).get(key) or _json_names(_library_dir()).get(key)


def save_pose(pose: Any, name: str, *, overwrite: bool = False, folder: str | Path | None = None) -> Path:
    """Write ``pose`` (a Pose or a PoseGroup) to the user's library as ``NAME.json`` (pose-editor
    JSON, written atomically) and return the path; `load_pose(name)` and `list_poses` then see it.

    An existing pose of that name is kept unless ``overwrite``: a file of the user's, and a shipped
    pose (which the new one would hide). ``folder`` overrides `user_pose_dir`."""
    from charstudio.io_utils import atomic_write

    key = _normalise_name(name) if isinstance(name, str) else name
    if not isinstance(key, str) or not _NAME_RE.match(key):
        raise ConfigError("name", name, "a pose name of letters, digits, spaces, '-' or '_' (e.g. 'arm up')")
    if not hasattr(pose, "to_dict") or not hasattr(pose, "render"):
        raise ConfigError("pose", type(pose).__name__, "a Pose or a PoseGroup to save")
    base = Path(folder).expanduser() if folder is not None else user_pose_dir()
    if not overwrite and key in _json_names(_library_dir()) and not (base / f"{key}.json").exists():
        raise ConfigError("name", key, "a name that no shipped pose has (it would hide it), or overwrite=True")
    base.mkdir(parents=True, exist_ok=True)
    text = json.dumps(pose.to_dict(), indent=1)
    path = atomic_write(base / f"{key}.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"),
                        overwrite=overwrite)
    log.info("saved pose %r to %s", key, path)
    return Path(path)


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
    found = library_file(name)
    if found is not None:
        try:
            data = json.loads(found.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError("pose", str(found), f"a pose file of valid JSON ({err})") from None
        return Pose.from_dict(data, **kwargs)
    if Path(text).is_file():
        return Pose.from_json(Path(text), **kwargs)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError("pose", pose, f"a pose name{hint} from: {', '.join(known)}; or a path to a pose JSON file")
