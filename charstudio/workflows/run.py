"""Running a recipe's workflows, in their one order: draw -> hires -> detail, or inpaint.

`Studio.run` checks the recipe against its model and switches the recipe's LoRAs on, then hands
it here. An inpainting recipe starts from its source picture (`inpaint.run_inpaint`); any other is
drawn by the engine (`studio.draw`, with the regions' attention in place: `drawing_context`),
then the hires fix upscales and redraws it. A recorded detail pass runs last, on either. So a
recipe read back from a PNG re-runs the whole workflow. The invisible watermark (the recipe's
`watermark`, charstudio.provenance.watermark) goes on the final picture, here, after them all; the
passes the workflows run inside (the hires fix's first pass, detail's patches, inpaint's redraw) run
without it. A detail pass starts from the picture marked as its recipe without the pass (what
`Studio.detail` on a saved picture starts from), and an inpainting from its marked source.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from ..provenance import watermark

if TYPE_CHECKING:
    from ..recipe.config import GenerationConfig
    from ..result import Result
    from ..studio import Studio


def run_recipe(studio: Studio, config: GenerationConfig, **run_args: Any) -> Result:
    """Run `config`'s workflows on `studio`: inpaint, or draw then the hires fix; then the detail
    pass. `run_args` are `Studio.run`'s (callbacks, progress, cancel, control_image, latents,
    embeddings, init_image, strength), handed to the first pass."""
    if config.inpaint:  # (never with the hires fix: recipe.inpaint refuses it)
        from .inpaint import run_inpaint

        first = run_inpaint(studio, config, **run_args)
    else:
        first = studio.draw(config, **run_args)
    return after_drawing(studio, config, first, run_args.get("progress"), run_args.get("cancel"))


def after_drawing(studio: Studio, config: GenerationConfig, result: Result, progress: Any = None,
                  cancel: Any = None) -> Result:
    """The workflows that follow a drawn `result` of `config`: the hires fix, then the detail pass,
    then the watermark (`Studio.run_batch` calls this on each picture of a batch)."""
    if config.hires:
        from .hires import apply_hires

        result = apply_hires(studio, config, result, progress=progress, cancel=cancel)
    if config.detail:
        from .detail import apply_detail

        # The pass starts from the picture a run of the recipe without it gives, marked as that one
        # is: so a detail pass run later on a saved picture (Studio.detail) re-runs to the same pixels.
        result.images[:] = watermark.mark(result.images, [r.replace(detail=None) for r in result.recipes])
        result = apply_detail(studio, config, result, progress=progress, cancel=cancel)
    # The final pictures: each marked with its own recipe's payload (a batch's too).
    result.images[:] = watermark.mark(result.images, result.recipes)
    return result


@contextmanager
def drawing_context(studio: Studio, config: GenerationConfig) -> Iterator[None]:
    """What must be in place while one pipeline call draws the recipe's picture: the regional
    prompts' attention processors when the recipe has regions, and the UNet's feature cache
    (charstudio.speed.cache) when it has one, fresh for each call so that each starts with a
    full step. Whatever was put in place comes off on exit, after an error too."""
    with ExitStack() as stack:
        if config.regions:
            from .regions import regional_attention

            stack.enter_context(regional_attention(studio, config))
        if config.feature_cache:
            from ..speed.cache import feature_cache

            stack.enter_context(feature_cache(studio, config))
        yield
