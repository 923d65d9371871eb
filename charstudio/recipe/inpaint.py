"""The recipe's ``inpaint`` field: redraw a masked part of a source picture, checked and
normalised (no torch). Inpainting itself runs in `charstudio.workflows.inpaint`.

The field records everything a re-run needs::

    {"source": {"recipe": {...}}                       # a charstudio picture: its own recipe
            or {"path": "...", "sha256": "..."},        # an outside picture: file and pixel digest
     "mask": {"box": [left, top, right, bottom]}
          or {"region": "face", "padding": 0.15}        # a body region of the source's pose
          or {"picture": "<base64 1-bit PNG>", "sha256": "..."},
     "strength": 0.75, "seam": 4}

A strength at which not one step of the recipe's schedule would run is refused here (the one
img2img steps guard, `recipe.steps.img2img_steps`).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..validation import check_float, check_int
from .masks import DEFAULT_PADDING, DEFAULT_SEAM, REGIONS, check_box, check_not_empty, decode_mask, mask_sha256
from .hires import picture_size
from .steps import img2img_steps

DEFAULT_STRENGTH = 0.75


# -- the recipe field ----------------------------------------------------------------------
def check(value: Any, config: Any) -> dict:
    """Validate and normalise a recipe's ``inpaint`` field (see the module docstring)."""
    if not isinstance(value, dict):
        raise ConfigError("inpaint", type(value).__name__, "a dict with source, mask, strength and seam")
    unknown = set(value) - {"source", "mask", "strength", "seam"}
    if unknown:
        raise ConfigError("inpaint", sorted(unknown), "only the keys source, mask, strength, seam")
    if config.hires:
        raise ConfigError("hires", config.hires, "none on an inpainting recipe: it keeps its source picture's size")
    source = value.get("source")
    if isinstance(source, dict) and isinstance(source.get("recipe"), dict) and len(source) == 1:
        # The recipe being checked is a GenerationConfig: its own class reads the source's (no
        # import of recipe.config, which registers this check).
        inner = type(config).from_dict(source["recipe"])
        if inner.num_images != 1:
            raise ConfigError("inpaint.source.recipe.num_images", inner.num_images, "1: one source picture")
        if picture_size(inner) != (config.width, config.height):
            raise ConfigError("inpaint.source", "{}x{}".format(*picture_size(inner)),
                              f"a source the recipe's size, {config.width}x{config.height}")
        source = {"recipe": inner.to_dict()}
    elif (isinstance(source, dict) and set(source) == {"path", "sha256"} and isinstance(source["sha256"], str)
          and (source["path"] is None or isinstance(source["path"], str))):
        source = {"path": source["path"], "sha256": source["sha256"]}
    else:
        raise ConfigError("inpaint.source", source, "{'recipe': {...}} (a charstudio picture) or "
                                                    "{'path': ..., 'sha256': ...} (an outside picture)")
    strength = check_float("inpaint.strength", value.get("strength", DEFAULT_STRENGTH), hi=1.0, above=0.0)
    img2img_steps(config.num_inference_steps, strength, "inpaint.strength")  # a strength too low for one step
    seam = check_int("inpaint.seam", value.get("seam", DEFAULT_SEAM), 0, 64)
    mask = check_mask_spec(value.get("mask"), config.width, config.height)
    return {"source": source, "mask": mask, "strength": strength, "seam": seam}


def check_mask_spec(spec: Any, width: int, height: int, field: str = "inpaint.mask") -> dict:
    """A recorded mask: exactly one of ``box``, ``region`` (with ``padding``) or ``picture``."""
    if not isinstance(spec, dict) or len({"box", "region", "picture"} & set(spec)) != 1:
        raise ConfigError(field, spec, "{'box': [l, t, r, b]}, {'region': 'face', 'padding': 0.15} or "
                                       "{'picture': <base64 PNG>}")
    if "box" in spec:
        return {"box": list(check_box(spec["box"], width, height, field))}
    if "region" in spec:
        if spec["region"] not in REGIONS:
            raise ConfigError(field, spec["region"], f"one of {', '.join(REGIONS)}")
        padding = check_float(f"{field}.padding", spec.get("padding", DEFAULT_PADDING), 0.0, 2.0)
        return {"region": spec["region"], "padding": padding}
    mask = decode_mask(spec["picture"], field)
    if mask.shape != (height, width):
        raise ConfigError(field, f"{mask.shape[1]}x{mask.shape[0]} picture", f"a mask of {width}x{height}")
    check_not_empty(mask, field)
    return {"picture": spec["picture"], "sha256": mask_sha256(mask)}
