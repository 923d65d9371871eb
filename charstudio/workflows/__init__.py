"""Character design workflows on top of a drawn picture, as runners: regional prompts (two
characters), the hires fix, the detail pass (face, hands), inpainting, turnaround and expression
sheets.

Each recipe-level workflow owns one `GenerationConfig` field. Its schema (check, normalise,
constants, sizes; no torch) is in `charstudio.recipe` and registered in
`recipe.workflow_fields`; the module here runs it through the engine's public API
(`studio.draw`, `studio.run`, `studio.render_pose`, step callbacks):

- ``regions`` (regions.py): masked cross-attention while the picture is drawn;
- ``hires`` (hires.py): upscale the drawn picture, then a second img2img pass;
- ``detail`` (detail.py): crop each part, redraw it at the model's size, paste it back;
- ``inpaint`` (inpaint.py): redraw a masked part of a source picture.

`run.run_recipe` owns their order: draw (with the regions), then the hires fix, then the detail
pass; an inpainting recipe starts from its source picture instead. `Studio.run` hands every
recipe to it, so a recipe read back from a PNG re-runs the whole workflow. No runner imports
another; what they share is in shared.py and masks.py. Sheets of views and expressions
(turnaround.py, expressions.py) are made of ordinary recipes and need no field.
"""

from __future__ import annotations

from .run import after_drawing, drawing_context, run_recipe

__all__ = ["after_drawing", "drawing_context", "run_recipe"]
