"""The workflow fields of a recipe, registered explicitly: field name -> its schema's check.

Each check takes the field's value and the recipe being validated, and returns the normalised
value (or raises a `ConfigError` naming the field). `GenerationConfig.__post_init__` runs them in
this order: ``inpaint``'s check reads the ``hires`` already normalised, ``detail``'s the recipe's
pose. The passes that run these fields are registered by code, not here:
`charstudio.workflows.run.run_recipe` owns their order ("draw -> hires -> detail, or inpaint").
"""

from __future__ import annotations

from typing import Any, Callable

from .detail import check as check_detail
from .hires import check as check_hires
from .inpaint import check as check_inpaint
from .regions import check as check_regions

FieldCheck = Callable[[Any, Any], Any]

WORKFLOW_FIELDS: dict[str, FieldCheck] = {
    "regions": check_regions,  # regional prompts: masked cross-attention while the picture is drawn
    "hires": check_hires,  # the hires fix: upscale the drawn picture, then a second img2img pass
    "detail": check_detail,  # the detail pass: redraw body parts at the model's size
    "inpaint": check_inpaint,  # redraw a masked part of a source picture
}


def check_workflow_fields(config: Any) -> None:
    """Validate and normalise the recipe's workflow fields in place (called by GenerationConfig)."""
    for name, check in WORKFLOW_FIELDS.items():
        value = getattr(config, name)
        if value:
            setattr(config, name, check(value, config))
        elif name == "regions":
            config.regions = [] if value is None else value
        else:
            setattr(config, name, None)
