"""Where the characters of a cast stand: one box per `@name` when a prompt names several.

Two characters in one picture need regional prompts (one prompt alone mixes their colours). When a
prompt names two or more cards and no regions are given, the studio gives each card a region, in
order of first mention, left to right:

- a pose with as many people as there are cards: each person's column (split halfway between
  neighbours' centres, people ordered left to right);
- otherwise: two cards take the ``left`` and ``right`` halves; more take equal columns.
"""

from __future__ import annotations

from typing import Any


def cast_boxes(count: int, width: int, height: int, pose: dict | None = None) -> list[Any]:
    """`count` boxes, left to right, for `count` characters on a width x height picture whose
    recipe pose (pose-editor JSON fitted to the picture) is `pose`."""
    centres = _people_centres(pose) if pose is not None else []
    if len(centres) == count and count > 1:
        centres.sort()
        cuts = [0] + [round((a + b) / 2) for a, b in zip(centres, centres[1:])] + [width]
        return [[cuts[i], 0, cuts[i + 1], height] for i in range(count)]
    if count == 2:
        return ["left", "right"]
    cuts = [round(i * width / count) for i in range(count + 1)]
    return [[cuts[i], 0, cuts[i + 1], height] for i in range(count)]


def _people_centres(pose: dict) -> list[float]:
    centres = []
    for person in pose.get("people") or ():
        flat = person.get("pose_keypoints_2d") or []
        xs = [flat[i] for i in range(0, len(flat) - 2, 3) if flat[i + 2] > 0]
        if xs:
            centres.append((min(xs) + max(xs)) / 2)
    return centres
