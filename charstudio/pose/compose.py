"""Several people in one pose: two characters side by side for one ControlNet picture.

A `PoseGroup` is people (each a `Pose` on the same canvas) that render into one OpenPose control
image, and its JSON is the editor format with one entry per person in ``people`` (what OpenPose
writes for a picture of several people), so a recipe's ``pose`` can hold it:

    >>> group = side_by_side("standing_front", "waving", width=128, height=64)
    >>> studio.generate("two friends", pose=group, width=128, height=64,
    ...                 regions=[{"prompt": "a girl with red hair", "box": "left"},
    ...                          {"prompt": "a boy with blue hair", "box": "right"}])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from ..validation import check_choice
from .drawing import POSE_LINES, draw_body, draw_face, draw_hand, limb_scale
from .skeleton import Pose

_PARTS = ("body", "hand_left", "hand_right", "face")


@dataclass(eq=False)
class PoseGroup:
    """Several people's poses on one ``canvas_width`` x ``canvas_height`` canvas."""

    people: list[Pose]
    canvas_width: int
    canvas_height: int

    def __post_init__(self) -> None:
        if not isinstance(self.people, (list, tuple)) or not self.people:
            raise ConfigError("people", self.people, "at least one person's Pose")
        size = (self.canvas_width, self.canvas_height)
        for i, p in enumerate(self.people):
            if not isinstance(p, Pose) or (p.canvas_width, p.canvas_height) != size:
                raise ConfigError(f"people[{i}]", p, f"a Pose on the group's {size[0]}x{size[1]} canvas")
        self.people = list(self.people)

    def require_keypoints(self, name: Any = "no keypoints") -> None:
        """Refuse a group in which someone has no keypoints (nothing to draw for them)."""
        for p in self.people:
            p.require_keypoints(name)

    def fit(self, width: int, height: int) -> PoseGroup:
        """The whole canvas fitted (uniform scale, centred, letterboxed) into width x height."""
        if (width, height) == (self.canvas_width, self.canvas_height):
            return PoseGroup([p.copy() for p in self.people], width, height)
        return PoseGroup([p.fit(width, height) for p in self.people], width, height)

    def to_dict(self) -> dict[str, Any]:
        """The pose-editor JSON: the canvas and one entry per person in ``people``."""
        return {"canvas_width": self.canvas_width, "canvas_height": self.canvas_height,
                "people": [p.to_dict()["people"][0] for p in self.people]}

    @classmethod
    def from_dict(cls, data: dict, **kwargs: Any) -> PoseGroup:
        """Every person of OpenPose or pose-editor JSON (keyword arguments as `Pose.from_dict`)."""
        if not isinstance(data, dict) or not isinstance(data.get("people"), list) or not data["people"]:
            raise ConfigError("pose", str(data)[:80], "a dict with a non-empty 'people' list")
        people = [Pose.from_dict(data, person=i, **kwargs) for i in range(len(data["people"]))]
        return cls(people, people[0].canvas_width, people[0].canvas_height)

    def render(self, width: int | None = None, height: int | None = None, *, hands: bool = True,
               face: bool = True, lines: str = "standard") -> Any:
        """One OpenPose control image with every person drawn (as `Pose.render` draws one)."""
        from PIL import Image

        group = self
        if width is not None or height is not None:
            width = width or max(1, round(height * self.canvas_width / self.canvas_height))
            height = height or max(1, round(width * self.canvas_height / self.canvas_width))
            group = self.fit(width, height)
        check_choice("lines", lines, POSE_LINES)
        group.require_keypoints()
        canvas = np.zeros((group.canvas_height, group.canvas_width, 3), dtype=np.uint8)
        scale = limb_scale(group.canvas_width, group.canvas_height, lines)
        for p in group.people:
            draw_body(canvas, p.body, scale)
            for hand in (p.hand_left, p.hand_right) if hands else ():
                if hand is not None:
                    draw_hand(canvas, hand)
            if face and p.face is not None:
                draw_face(canvas, p.face)
        return Image.fromarray(canvas, "RGB")


def side_by_side(*poses: Any, width: int | None = None, height: int | None = None) -> PoseGroup:
    """People next to each other: the canvas is split into equal columns, one per pose, left to
    right, and each pose (a Pose, a library pose name, pose JSON) is fitted into its column.

    The default canvas is the first pose's height and the columns' widths added up."""
    from .library import load_pose

    if len(poses) < 2:
        raise ConfigError("poses", len(poses), "two or more poses to place side by side")
    loaded = [p if isinstance(p, Pose) else load_pose(p) for p in poses]
    if height is None:
        height = loaded[0].canvas_height
    if width is None:
        width = sum(max(1, round(p.canvas_width * height / p.canvas_height)) for p in loaded)
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < len(poses) * 8:
            raise ConfigError(name, value, f"a whole number of pixels, at least {len(poses) * 8}")
    people = []
    for i, pose in enumerate(loaded):
        x0, x1 = width * i // len(loaded), width * (i + 1) // len(loaded)
        cell = pose.fit(x1 - x0, height)
        parts = {}
        for part in _PARTS:
            pts = getattr(cell, part)
            if pts is not None:
                pts = pts.copy()
                pts[pts[:, 2] > 0, 0] += x0
            parts[part] = pts
        people.append(Pose(canvas_width=width, canvas_height=height, **parts))
    return PoseGroup(people, width, height)


def load_people(pose: Any) -> Pose | PoseGroup:
    """A pose as `load_pose` reads it, except that JSON with several people (or a PoseGroup) gives
    a `PoseGroup` of them all (a library name too)."""
    from .library import library_file, load_pose

    if isinstance(pose, PoseGroup):
        return pose
    data = pose
    if isinstance(pose, (str, Path)) and str(pose).lower().endswith(".json") and Path(pose).is_file():
        from ..io_utils import read_text

        try:
            data = json.loads(read_text(Path(pose), "pose file"))
        except json.JSONDecodeError:
            data = pose  # load_pose names the file and the error
    elif isinstance(pose, str) and not pose.lstrip().startswith(("{", "[")) and library_file(pose) is not None:
        try:  # a library pose of several people (one the pose editor saved)
            data = json.loads(library_file(pose).read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = pose  # load_pose names the file and the error
    if isinstance(data, dict) and isinstance(data.get("people"), list) and len(data["people"]) > 1:
        return PoseGroup.from_dict(data)
    return load_pose(pose)


def people_of(pose: Any) -> Sequence[Pose]:
    """The people of a pose (one Pose, or a group's)."""
    group = load_people(pose)
    return group.people if isinstance(group, PoseGroup) else [group]
