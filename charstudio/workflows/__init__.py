"""Character design workflows on top of a drawn picture: regional prompts (two characters),
the hires fix, the detail pass (face, hands), inpainting, turnaround and expression sheets.

Each recipe-level workflow owns one `GenerationConfig` field and one module here:

- ``regions`` (regions.py): masked cross-attention while the picture is drawn;
- ``hires`` (hires.py): upscale the drawn picture, then a second img2img pass;
- ``detail`` (detail.py): crop each part, redraw it at the model's size, paste it back;
- ``inpaint`` (inpaint.py): redraw a masked part of a source picture.

Each module has ``check(value, config)`` (validate and normalise the field; a `ConfigError`
naming it otherwise). `Studio.run` draws the picture (with the regions), then applies the hires
fix, then the detail pass; an inpainting recipe starts from its source picture instead. So a
recipe read back from a PNG re-runs the whole workflow. Sheets of views and expressions
(turnaround.py, expressions.py) are made of ordinary recipes and need no field.
"""

from __future__ import annotations

import importlib
from contextlib import nullcontext
from typing import Any

# GenerationConfig field -> the module (in this package) that checks and runs it.
WORKFLOW_FIELDS = {"regions": "regions", "hires": "hires", "detail": "detail", "inpaint": "inpaint"}


def workflow_module(field_name: str) -> Any:
    return importlib.import_module(f"{__name__}.{WORKFLOW_FIELDS[field_name]}")


def check_workflows(config: Any) -> None:
    """Validate and normalise the recipe's workflow fields in place (called by GenerationConfig)."""
    for name in WORKFLOW_FIELDS:
        value = getattr(config, name)
        if value:
            setattr(config, name, workflow_module(name).check(value, config))
        elif name == "regions":
            config.regions = [] if value is None else value
        else:
            setattr(config, name, None)


def drawing_context(studio: Any, config: Any) -> Any:
    """What must be in place while the recipe's picture is drawn: the regional prompts' attention
    processors when the recipe has regions, else nothing."""
    if not config.regions:
        return nullcontext()
    return workflow_module("regions").regional_attention(studio, config)
