"""Editing a pose: the pure operations behind the pose editor (`charstudio.ui.pose_editor`).

Everything here works on a `PoseGroup` (one or more people on one canvas) and returns a new one;
nothing is changed in place, so an edit history is a list of groups and undo is taking one back:

    >>> group = as_group("standing_front")
    >>> group = move_joint(group, person=0, joint="right_wrist", x=140, y=90)   # an arm up
    >>> group = mirror(group, 0)                                                # left <-> right
    >>> group = add_person(group, "waving")                                     # a second person
    >>> history = EditHistory(group); history.apply(rotate, 1, 15); history.undo()

Joints are the COCO-18 body points (`COCO18_NAMES`), by index 0-17 or by name. A hand follows its
wrist and the face its nose when those are dragged. Whole-figure operations (mirror, rotate,
scale, translate) act on one person (a turn about the mean of their points, the rest about the
centre of their box) and keep the figure on the canvas: it is pushed back inside when it fits, and clipped at the border only when it is
larger than the canvas. A joint dragged past the border stops at it.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError
from .compose import PoseGroup, load_people
from .keypoints import COCO18_NAMES, N_BODY
from .skeleton import CANVAS_EDGE as _EDGE, Pose

log = logging.getLogger(__name__)

_PARTS = ("body", "hand_left", "hand_right", "face")
# Dragging one of these joints carries these parts along (a hand with its wrist, the face with the nose).
_CARRIED = {4: ("hand_right",), 7: ("hand_left",), 0: ("face",)}
MAX_UNDO = 100


# -- checks -----------------------------------------------------------------------------------------
def as_group(pose: Any) -> PoseGroup:
    """A PoseGroup from a Pose, a PoseGroup (copied), a library name, a JSON file or pose JSON (one or
    more people)."""
    loaded = load_people(pose)
    if isinstance(loaded, PoseGroup):
        return PoseGroup([p.copy() for p in loaded.people], loaded.canvas_width, loaded.canvas_height)
    return PoseGroup([loaded], loaded.canvas_width, loaded.canvas_height)


def as_pose(group: PoseGroup) -> Pose | PoseGroup:
    """What a recipe takes: the one person's Pose, or the group when there are several."""
    return group.people[0].copy() if len(group.people) == 1 else as_group(group)


def check_person(group: PoseGroup, person: Any) -> int:
    """``person`` as an index into the group's people, or a ConfigError naming the choices."""
    n = len(group.people)
    if isinstance(person, bool) or not isinstance(person, (int, np.integer)) or not 0 <= person < n:
        raise ConfigError("person", person, f"an index from 0 to {n - 1}: this pose has {n} {_people(n)}")
    return int(person)


def check_joint(joint: Any) -> int:
    """A body joint by index (0-17) or COCO-18 name ("right_wrist"), as its index."""
    if isinstance(joint, str) and joint.strip().lower().replace(" ", "_") in COCO18_NAMES:
        return COCO18_NAMES.index(joint.strip().lower().replace(" ", "_"))
    if isinstance(joint, bool) or not isinstance(joint, (int, np.integer)) or not 0 <= joint < N_BODY:
        raise ConfigError("joint", joint, f"a body joint index from 0 to {N_BODY - 1} or a name: "
                          f"{', '.join(COCO18_NAMES)}")
    return int(joint)


def _number(field: str, value: Any, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ConfigError(field, value, expected)
    return float(value)


def _people(n: int) -> str:
    return "person" if n == 1 else "people"


# -- one person's points ----------------------------------------------------------------------------
def _parts(pose: Pose) -> dict[str, np.ndarray | None]:
    return {part: None if getattr(pose, part) is None else getattr(pose, part).copy() for part in _PARTS}


def _present_points(parts: dict[str, np.ndarray | None]) -> np.ndarray:
    pts = [p[p[:, 2] > 0, :2] for p in parts.values() if p is not None]
    return np.concatenate(pts) if pts else np.zeros((0, 2))


def _rebuild(pose: Pose, parts: dict[str, np.ndarray | None]) -> Pose:
    """A Pose of these parts on ``pose``'s canvas, kept inside it (see the module docstring)."""
    w, h = pose.canvas_width, pose.canvas_height
    pts = _present_points(parts)
    if len(pts):
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        limit = np.array([w - _EDGE, h - _EDGE])
        # On each axis where the figure fits, move it back inside; where it does not, clip below.
        fits = hi - lo <= limit
        shift = np.where(fits & (lo < 0), -lo, 0.0)
        shift = np.where(fits & (hi > limit), limit - hi, shift)
        clipped = False
        for arr in parts.values():
            if arr is None:
                continue
            ok = arr[:, 2] > 0
            moved = arr[ok, :2] + shift
            inside = np.clip(moved, 0.0, limit)
            clipped |= bool((inside != moved).any())
            arr[ok, :2] = inside
        if clipped:
            log.info("the figure is larger than the %dx%d canvas: points clipped to its border", w, h)
    return Pose(canvas_width=w, canvas_height=h, **parts)


def _transform(pose: Pose, fn: Callable[[np.ndarray], np.ndarray]) -> Pose:
    parts = _parts(pose)
    for arr in parts.values():
        if arr is not None:
            ok = arr[:, 2] > 0
            arr[ok, :2] = fn(arr[ok, :2])
    return _rebuild(pose, parts)


def _centre(pose: Pose) -> np.ndarray:
    x0, y0, x1, y1 = pose.bbox()
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2])


def _replace(group: PoseGroup, person: int, pose: Pose) -> PoseGroup:
    people = [p.copy() for p in group.people]
    people[person] = pose
    return PoseGroup(people, group.canvas_width, group.canvas_height)


# -- the operations -----------------------------------------------------------------------------------
def move_joint(group: PoseGroup, person: int, joint: int | str, x: float, y: float) -> PoseGroup:
    """Joint ``joint`` of ``person`` moved to (x, y) canvas pixels (a missing joint is placed there).

    A point past the canvas stops at its border; a wrist carries its hand and the nose the face."""
    person, joint = check_person(group, person), check_joint(joint)
    x = _number("x", x, "an x position in canvas pixels")
    y = _number("y", y, "a y position in canvas pixels")
    pose = group.people[person]
    x = min(max(x, 0.0), pose.canvas_width - _EDGE)
    y = min(max(y, 0.0), pose.canvas_height - _EDGE)
    parts = _parts(pose)
    body = parts["body"]
    if body[joint, 2] > 0:
        delta = np.array([x, y]) - body[joint, :2]
        for part in _CARRIED.get(joint, ()):
            arr = parts[part]
            if arr is not None:
                ok = arr[:, 2] > 0
                arr[ok, :2] = np.clip(arr[ok, :2] + delta, 0.0, [pose.canvas_width - _EDGE, pose.canvas_height - _EDGE])
    body[joint] = (x, y, body[joint, 2] if body[joint, 2] > 0 else 1.0)
    return _replace(group, person, Pose(canvas_width=pose.canvas_width, canvas_height=pose.canvas_height, **parts))


def mirror(group: PoseGroup, person: int) -> PoseGroup:
    """``person`` flipped left-right in place (about the middle of their box): left and right
    joints swap, as in `Pose.mirror`, and the figure stays where it was."""
    person = check_person(group, person)
    pose = group.people[person]
    x0, _, x1, _ = pose.bbox()
    shift = np.array([(x0 + x1) - (pose.canvas_width - _EDGE), 0.0])  # Pose.mirror reflects the canvas
    return _replace(group, person, _transform(pose.mirror(), lambda xy: xy + shift))


def rotate(group: PoseGroup, person: int, degrees: float) -> PoseGroup:
    """``person`` turned by ``degrees`` clockwise on screen about the mean of their points (which
    a turn keeps in place, so +15 then -15 comes back exactly, unless the border was reached)."""
    person = check_person(group, person)
    a = math.radians(_number("degrees", degrees, "an angle in degrees, e.g. 15 or -15"))
    pose = group.people[person]
    c = _present_points(_parts(pose)).mean(axis=0)
    turn = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])  # row vectors, y down
    return _replace(group, person, _transform(pose, lambda xy: (xy - c) @ turn + c))


def scale(group: PoseGroup, person: int, factor: float) -> PoseGroup:
    """``person`` made ``factor`` times larger (0.9 smaller) about the centre of their box."""
    person = check_person(group, person)
    f = _number("factor", factor, "a positive number, e.g. 1.1 to grow or 0.9 to shrink")
    if not 0.05 <= f <= 20:
        raise ConfigError("factor", factor, "a positive number from 0.05 to 20, e.g. 1.1 to grow or 0.9 to shrink")
    pose = group.people[person]
    c = _centre(pose)
    return _replace(group, person, _transform(pose, lambda xy: (xy - c) * f + c))


def translate(group: PoseGroup, person: int, dx: float, dy: float) -> PoseGroup:
    """``person`` moved by (dx, dy) canvas pixels; the figure stops at the canvas border."""
    person = check_person(group, person)
    d = np.array([_number("dx", dx, "a shift in canvas pixels"), _number("dy", dy, "a shift in canvas pixels")])
    return _replace(group, person, _transform(group.people[person], lambda xy: xy + d))


def add_person(group: PoseGroup, pose: Any = None) -> PoseGroup:
    """The group with one more person: ``pose`` (a Pose, library name or pose JSON, fitted to the
    canvas), else a copy of the last person. The newcomer is placed in the wider empty band beside
    the others (made smaller, down to half size, if the band is narrow)."""
    w, h = group.canvas_width, group.canvas_height
    if pose is None:
        new = group.people[-1].copy()
    else:
        loaded = load_people(pose)
        if isinstance(loaded, PoseGroup):
            raise ConfigError("pose", f"{len(loaded.people)} people", "one person's pose to add")
        new = loaded.fit(w, h)
    new.require_keypoints("the person to add")
    left = min(p.bbox()[0] for p in group.people)
    right = max(p.bbox()[2] for p in group.people)
    band = (0.0, left) if left > w - right else (right, float(w))
    x0, _, x1, _ = new.bbox()
    factor = max(0.5, min(1.0, 0.9 * (band[1] - band[0]) / max(x1 - x0, 1.0)))
    c = _centre(new)
    target = np.array([(band[0] + band[1]) / 2, c[1]])
    new = _transform(new, lambda xy: (xy - c) * factor + target)
    return PoseGroup([p.copy() for p in group.people] + [new], w, h)


def delete_person(group: PoseGroup, person: int) -> PoseGroup:
    """The group without ``person``; the last person cannot be deleted."""
    person = check_person(group, person)
    if len(group.people) == 1:
        raise ConfigError("person", person, "another person to delete: a pose keeps at least one person")
    return PoseGroup([p.copy() for i, p in enumerate(group.people) if i != person],
                     group.canvas_width, group.canvas_height)


# -- history ------------------------------------------------------------------------------------------
class EditHistory:
    """The current group, the groups before it (undo) and after it (redo, until the next edit).

    `apply(op, *args)` runs an operation above on the current group and records the step; an
    operation that raises leaves everything as it was. At most `limit` steps are kept.
    """

    def __init__(self, pose: Any, limit: int = MAX_UNDO):
        self.current = as_group(pose)
        self.limit = limit
        self._undo: list[PoseGroup] = []
        self._redo: list[PoseGroup] = []

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def push(self, group: PoseGroup) -> PoseGroup:
        """Make ``group`` the current one (e.g. a new starting pose), undoably."""
        self._undo.append(self.current)
        del self._undo[: max(0, len(self._undo) - self.limit)]
        self._redo.clear()
        self.current = group
        return group

    def apply(self, op: Callable[..., PoseGroup], *args: Any, **kwargs: Any) -> PoseGroup:
        """``op(current, *args, **kwargs)`` as the new current group."""
        return self.push(op(self.current, *args, **kwargs))

    def undo(self) -> PoseGroup:
        """Back one step; a ConfigError when there is nothing to undo."""
        if not self._undo:
            raise ConfigError("undo", "no earlier step", "an edit to undo first")
        self._redo.append(self.current)
        self.current = self._undo.pop()
        return self.current

    def redo(self) -> PoseGroup:
        """Forward one undone step; a ConfigError when there is none."""
        if not self._redo:
            raise ConfigError("redo", "no undone step", "an undo to redo first")
        self._undo.append(self.current)
        self.current = self._redo.pop()
        return self.current
