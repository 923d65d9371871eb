"""The hires fix, run: draw at the model's native size, upscale, then redraw the large picture
with a second, partial (img2img) pass under the same prompt, seed, LoRAs and pose.

A model drawn straight at twice its native size repeats its subject; drawn at its native size
and merely resized, the picture is soft. The second pass keeps the first pass's layout (it starts
from the upscaled picture, noised by ``strength``) and draws the detail the larger size has room
for.

The recipe field ``hires`` (its settings, checks and sizes) is `charstudio.recipe.hires`; the
steps guard of the second pass is `charstudio.recipe.steps.img2img_steps`. Their names stay
importable from here.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError
from ..recipe.hires import (  # noqa: F401 - the schema's names, importable from here as before
    A1111_UPSCALERS,
    DEFAULT_STRENGTH,
    DEFAULT_UPSCALER,
    KEYS,
    MAX_SCALE,
    MAX_SIDE,
    MIN_SIDE,
    SIZE_STEP,
    UPSCALERS,
    check,
    hires_size,
    normalise,
    picture_size,
    second_pass_steps,
)
from ..recipe.steps import MAX_SCHEDULE, Img2ImgSteps, img2img_steps, schedule_length  # noqa: F401
from .shared import supported_rescale

if TYPE_CHECKING:
    from ..recipe.config import GenerationConfig
    from ..result import Result
    from ..studio import Studio

log = logging.getLogger(__name__)


def check_size(studio: Studio, config: GenerationConfig) -> tuple[int, int]:
    """Refuse a hires picture too large for the studio's model (the same bound as any picture:
    `limits.max_side` of its native size unless `studio.allow_large`, and the memory its decode
    needs). Raises a one-line ConfigError naming hires.scale; returns the hires size."""
    from ..limits import available_memory, check_picture_size, max_side

    width, height = hires_size(config)
    scale = config.hires["scale"]
    limit = max_side(studio.default_size)
    model = repr(studio.model_id)
    if not studio.allow_large and max(width, height) > limit:
        most = (limit + SIZE_STEP - 1) / max(config.width, config.height)
        raise ConfigError("hires.scale", scale, f"{config.width}x{config.height} times {scale:g} is {width}x{height}, "
                          f"over the {limit} px a side {model} (trained at {studio.default_size}) draws without "
                          f"opt-in: use a factor up to {math.floor(most * 100) / 100:g}, or opt in with "
                          "allow_large=True (CLI: --allow-large)")
    try:
        check_picture_size(width, height, studio.default_size, allow_large=True,
                           memory_bytes=available_memory(studio.device), model=model)
    except ConfigError as exc:
        raise ConfigError("hires.scale", scale, f"the second pass draws {width}x{height}: {exc.expected}") from None
    return width, height


def second_pass_config(studio: Studio, recipe: GenerationConfig) -> GenerationConfig:
    """The one-image recipe the second pass runs: the first pass's, at the hires size, with the
    schedule that runs `steps` steps at `strength`, and SDXL's micro-conditioning scaled to the
    new size (A1111 conditions its hires pass on the hires size too)."""
    settings = recipe.hires
    width, height = hires_size(recipe)
    run = second_pass_steps(recipe)
    changes: dict[str, Any] = dict(width=width, height=height, num_images=1, hires=None, detail=None,
                                   num_inference_steps=schedule_length(run, settings["strength"]))
    sy, sx = height / recipe.height, width / recipe.width
    for key in studio.family.conditioning_defaults(recipe.width, recipe.height):
        value = getattr(recipe, key)
        if value is not None:
            changes[key] = (round(value[0] * sy), round(value[1] * sx))
    kind = "controlnet_img2img" if recipe.pose is not None else "img2img"
    changes["guidance_rescale"] = supported_rescale(studio, kind, recipe.guidance_rescale)
    return recipe.replace(**changes)


def upscale(studio: Studio, image: Any, latents: Any, settings: dict, size: tuple[int, int]) -> Any:
    """The second pass's starting point at `size`: the first pass's latents resized bilinearly
    (A1111's "Latent": bilinear, no antialiasing), or its picture resized with Lanczos (a PIL
    image, which the img2img pipeline VAE-encodes)."""
    from PIL import Image

    width, height = size
    if settings["upscaler"] == "pixel" or latents is None:
        if settings["upscaler"] == "latent":
            log.warning("the first pass's latents are not at hand; encoding its picture for the latent upscaler")
            latents = studio.encode(image)
        else:
            return image.convert("RGB").resize((width, height), Image.LANCZOS)
    import torch

    from ..models.vae import vae_factor

    factor = vae_factor(studio.components["vae"])
    with torch.no_grad():
        return torch.nn.functional.interpolate(latents.float(), size=(height // factor, width // factor),
                                               mode="bilinear", align_corners=False).to(latents.dtype)


def apply_hires(studio: Studio, config: GenerationConfig, result: Result, progress: Callable | None = None,
                cancel: Any = None) -> Result:
    """Redraw each picture of `result` (the first pass of `config`) at the hires size.

    Returns a Result with the large pictures and the same recipes (their width/height stay the
    first pass's; the saved picture is `hires_size(recipe)`). Its extras hold the second pass's
    latents and the first pass's pictures ("first_pass"). `progress` gets the second pass's
    steps: image i of N, step k of the second pass's step count.
    """
    from ..callbacks import StepProgress
    from ..result import Result

    check_size(studio, config)
    latents = list(result.extras.get("latents") or [])
    images, latents_out = [], []
    count = len(result.images)
    for i, (image, recipe) in enumerate(zip(result.images, result.recipes)):
        if cancel is not None:
            cancel.check()
        second = second_pass_config(studio, recipe)
        start = upscale(studio, image, latents[i] if i < len(latents) else None, recipe.hires,
                        (second.width, second.height))

        def report(p: StepProgress, index: int = i + 1) -> None:
            progress(StepProgress(image=index, images=count, step=p.step, steps=p.steps))

        log.info("hires pass %d/%d: %dx%d -> %dx%d, %d steps at strength %g (%s upscaler)", i + 1, count,
                 recipe.width, recipe.height, second.width, second.height, second_pass_steps(recipe),
                 recipe.hires["strength"], recipe.hires["upscaler"])
        out = studio.draw(second, callbacks=(), progress=report if progress is not None else None, cancel=cancel,
                          control_image=None, latents=None, embeddings=None, init_image=start,
                          strength=recipe.hires["strength"])
        images.append(out.image)
        latents_out.extend(out.extras.get("latents") or [None])
    extras = dict(result.extras, latents=latents_out, first_pass=list(result.images))
    return Result(images, list(result.recipes), extras)
