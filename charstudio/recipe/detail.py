"""The recipe's ``detail`` field: the detail pass over body parts (the face, the hands), checked
and normalised (no torch). The pass itself runs in `charstudio.workflows.detail`.

The field is ``{"parts": [...], "strength": 0.35, "steps": N, "padding": 0.15, "seam": 4}``
(``True`` means these defaults, steps being the recipe's). Each redraw is an img2img run of
``steps`` at ``strength``: the last int(steps * strength) steps run, and at least one; where
steps * strength is under 1 the field records ``steps: 1``, the step that ran (the guard
`recipe.steps.img2img_steps`), which re-runs the same picture. Parts the recipe's pose lacks
are refused here, before anything is drawn.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..validation import check_float, check_int
from .masks import DEFAULT_PADDING, DEFAULT_SEAM, REGIONS, pose_boxes
from .steps import img2img_steps

DEFAULT_PARTS = ("face", "hands")
DEFAULT_STRENGTH = 0.35


def check(value: Any, config: Any) -> dict:
    """Validate and normalise a recipe's ``detail`` field; parts the recipe's pose lacks are
    refused here, before anything is drawn."""
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError("detail", value, "True, or a dict with parts, strength, steps, padding, seam")
    unknown = set(value) - {"parts", "strength", "steps", "padding", "seam"}
    if unknown:
        raise ConfigError("detail", sorted(unknown), "only the keys parts, strength, steps, padding, seam")
    parts = check_parts(value.get("parts", DEFAULT_PARTS))
    strength = check_float("detail.strength", value.get("strength", DEFAULT_STRENGTH), hi=1.0, above=0.0)
    steps = check_int("detail.steps", value.get("steps", config.num_inference_steps), 1, 1000)
    spec = {"parts": parts, "strength": strength,
            # The steps that run: at least one (the one img2img steps guard; see the module docstring).
            "steps": img2img_steps(steps, strength, "detail.strength").recorded,
            "padding": check_float("detail.padding", value.get("padding", DEFAULT_PADDING), 0.0, 2.0),
            "seam": check_int("detail.seam", value.get("seam", DEFAULT_SEAM), 0, 64)}
    if config.pose is not None:
        for part in parts:
            pose_boxes(config.pose, part, config.width, config.height, spec["padding"], "detail.parts")
    return spec


def check_parts(parts: Any) -> list[str]:
    """Part names as a list: from a list or ``"face,hands"``; each one of `masks.REGIONS`, once."""
    if isinstance(parts, str):
        parts = [p.strip() for p in parts.split(",") if p.strip()]
    if not isinstance(parts, (list, tuple)) or not parts or not all(isinstance(p, str) for p in parts):
        raise ConfigError("detail.parts", parts, f"one or more of {', '.join(REGIONS)}, e.g. ['face', 'hands']")
    for part in parts:
        if part not in REGIONS:
            raise ConfigError("detail.parts", part, f"one of {', '.join(REGIONS)}")
    if len(set(parts)) != len(parts):
        raise ConfigError("detail.parts", list(parts), "each part once")
    return list(parts)
