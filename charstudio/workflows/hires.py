"""The hires fix: draw at the model's native size, upscale, then redraw the large picture with a
second, partial (img2img) pass under the same prompt, seed, LoRAs and pose.

A model drawn straight at twice its native size repeats its subject; drawn at its native size
and merely resized, the picture is soft. The second pass keeps the first pass's layout (it starts
from the upscaled picture, noised by ``strength``) and draws the detail the larger size has room
for.

The recipe field ``hires`` is a factor (``1.5``) or a dict::

    {"scale": 1.5,          # > 1; the picture grows to int(side * scale) rounded down to 8 px
     "strength": 0.4,       # (0, 1]: how far the upscaled picture is noised before the redraw
     "steps": None,         # denoising steps of the second pass; None: the recipe's own count
     "upscaler": "pixel"}   # "pixel": the decoded picture, Lanczos, then VAE-encoded;
                            # "latent": the first pass's latents, bilinear (A1111's "Latent")

The recipe's ``width``/``height`` stay the first pass's size (A1111's "Size" does the same); the
saved picture is ``hires_size(recipe)``. ``steps`` counts the steps the second pass actually runs,
as A1111's "Hires steps" does: the scheduler is set up for ``ceil(steps / strength)`` steps and
the last ``steps`` of them run.

`img2img_steps` (beside `schedule_length`) is the one steps guard every img2img-like pass shares
(from_photo, inpainting, the detail pass, this second pass): at least one step runs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError
from ..validation import check_choice, check_float, check_int

log = logging.getLogger(__name__)

UPSCALERS = ("latent", "pixel")
# How A1111 names them in its "Hires upscaler" field (its "Latent" mode is bilinear without
# antialiasing; "Lanczos" is PIL's Lanczos resize).
A1111_UPSCALERS = {"latent": "Latent", "pixel": "Lanczos"}
# Measured on mini at 1.5x over 4 seeds (README "Hires fix"): Lanczos pixels at 0.4 keep the
# layout (foreground IoU against the resized first pass >= 0.88, mean 0.90) with clean flat
# colours; bilinear latents come out blotchy below 0.5 and lose the layout from 0.5 up (mean IoU
# 0.80 at 0.5, 0.73 at 0.6).
DEFAULT_STRENGTH = 0.4
DEFAULT_UPSCALER = "pixel"
# Recipe sizes are multiples of 8 (SD's and SDXL's VAE factor, and a multiple of mini's 4).
SIZE_STEP = 8
# Schedulers are set up for at most this many steps (GenerationConfig's own limit).
MAX_SCHEDULE = 1000
KEYS = ("scale", "strength", "steps", "upscaler")
# A recipe's sides are MIN_SIDE..MAX_SIDE px (config.check_size): no factor above MAX_SCALE
# makes a picture any recipe may have.
MIN_SIDE, MAX_SIDE = 8, 8192
MAX_SCALE = MAX_SIDE / MIN_SIDE


def check(value: Any, config: Any) -> dict[str, Any]:
    """Validate the recipe's ``hires`` field: a factor or a dict of KEYS; returns the full dict."""
    settings = normalise(value)
    width, height = hires_size(config, settings)
    if max(width, height) > MAX_SIDE:
        raise ConfigError("hires.scale", settings["scale"], f"{config.width}x{config.height} times "
                          f"{settings['scale']:g} is {width}x{height}, over the largest size ({MAX_SIDE} px a side): "
                          f"use a factor up to {math.floor(MAX_SIDE / max(config.width, config.height) * 100) / 100:g}")
    if (width, height) == (config.width, config.height):
        raise ConfigError("hires.scale", settings["scale"], f"{config.width}x{config.height} times "
                          f"{settings['scale']:g} rounds down to the same size (sides are multiples of {SIZE_STEP}): "
                          "use a larger factor")
    run = second_pass_steps(config, settings)
    if int(MAX_SCHEDULE * settings["strength"]) < run:  # (a tiny strength: run / strength may be infinite)
        raise ConfigError("hires.strength", settings["strength"], f"running {run} steps at this strength needs a "
                          f"schedule of more than {MAX_SCHEDULE} steps (the most there are): raise the strength or "
                          "lower hires.steps")
    return settings


def normalise(value: Any) -> dict[str, Any]:
    """The hires settings as a full dict, checked on their own (no recipe needed: the CLI checks
    its flags with it before loading a model)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, dict)):
        raise ConfigError("hires", value, 'an upscale factor such as 1.5, or a dict {"scale": 1.5, "strength": 0.4, '
                          '"steps": None, "upscaler": "pixel" or "latent"}')
    data = {"scale": value} if not isinstance(value, dict) else dict(value)
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"hires.{unknown[0]}", data[unknown[0]], f"the hires fix's settings are {', '.join(KEYS)}")
    if "scale" not in data:
        raise ConfigError("hires.scale", None, "the upscale factor, e.g. 1.5 (the picture grows 1.5x a side)")
    scale = check_float("hires.scale", data["scale"], above=1.0)
    if scale > MAX_SCALE:  # (1e308 would overflow the size arithmetic)
        raise ConfigError("hires.scale", scale, f"at most {MAX_SCALE:g}: even an {MIN_SIDE} px picture grows past "
                          f"the largest size, {MAX_SIDE} px a side; e.g. 1.5 or 2")
    strength = check_float("hires.strength", data.get("strength", DEFAULT_STRENGTH), hi=1.0, above=0.0)
    steps = data.get("steps")
    if steps is not None:
        steps = check_int("hires.steps", steps, 1, MAX_SCHEDULE)
    upscaler = data.get("upscaler", DEFAULT_UPSCALER)
    upscaler = check_choice("hires.upscaler", upscaler.lower() if isinstance(upscaler, str) else upscaler, UPSCALERS)
    return {"scale": scale, "strength": strength, "steps": steps, "upscaler": upscaler}


def picture_size(config: Any) -> tuple[int, int]:
    """(width, height) of the picture a recipe draws: the hires size when it has the hires fix
    (its width/height are the first pass's), else its own."""
    return hires_size(config) if config.hires else (config.width, config.height)


def hires_size(config: Any, settings: dict | None = None) -> tuple[int, int]:
    """(width, height) of the hires picture: each side times the factor, rounded down to 8 px
    (as A1111 does: int(side * scale), then whole latent blocks)."""
    scale = float((settings or config.hires)["scale"])
    return tuple(max(SIZE_STEP, int(side * scale) // SIZE_STEP * SIZE_STEP)  # type: ignore[return-value]
                 for side in (config.width, config.height))


def second_pass_steps(config: Any, settings: dict | None = None) -> int:
    """How many denoising steps the second pass runs: `steps`, else the recipe's count."""
    steps = (settings or config.hires)["steps"]
    return int(config.num_inference_steps if steps is None else steps)


def schedule_length(steps: int, strength: float) -> int:
    """The scheduler length whose last `steps` steps diffusers' img2img runs at `strength` (it
    runs int(length * strength) of them)."""
    length = max(steps, math.ceil(steps / strength))
    while int(length * strength) < steps:  # float rounding: 0.3 * 10 is 2.9999...
        length += 1
    while length > steps and int((length - 1) * strength) >= steps:
        length -= 1
    return length


@dataclass(frozen=True)
class Img2ImgSteps:
    """How an img2img-like pass runs (`img2img_steps`)."""

    schedule: int  # the num_inference_steps handed to diffusers (with the strength unchanged)
    run: int  # the denoising steps that run: the last `run` steps of that schedule
    recorded: int  # the recipe's step count: the one asked for, or `run` when the guard raised it


def img2img_steps(steps: int, strength: float, field: str = "strength") -> Img2ImgSteps:
    """The one steps guard of every img2img-like pass: `Studio.run` with a starting picture
    (from_photo, inpainting, the detail pass's redraws, the hires fix's second pass, and these
    inside sheets) and diffusers' inpainting pipeline go through it.

    diffusers' img2img and inpainting pipelines set the scheduler up for ``steps`` steps and run
    the last ``min(int(steps * strength), steps)`` of them; below one they fail on an empty
    schedule. As in A1111 (``max(1, int(steps * strength))``) at least one step runs: the schedule
    is then the shortest whose last step diffusers starts at ``strength``
    (``schedule_length(1, strength)``, about ``1 / strength`` steps), so the picture is noised as
    far as asked and no further, and the recipe records 1, the step that ran. Re-run, that recipe
    (1 step at this strength) gets the same schedule, so the same picture. Whenever
    ``int(steps * strength) >= 1`` nothing changes (schedule and record are ``steps``): those
    recipes re-run bit-identically.

    A strength so low that even a `MAX_SCHEDULE`-step schedule runs no step is refused with a
    one-line ConfigError naming ``field``.
    """
    steps = check_int("num_inference_steps", steps, 1, MAX_SCHEDULE)
    strength = check_float(field, strength, hi=1.0, above=0.0)
    run = min(int(steps * strength), steps)  # diffusers' own rule (get_timesteps)
    if run >= 1:
        return Img2ImgSteps(schedule=steps, run=run, recorded=steps)
    if int(MAX_SCHEDULE * strength) < 1:
        raise ConfigError(field, strength, f"at least {1 / MAX_SCHEDULE:g}: below it not one step of a "
                                           f"{MAX_SCHEDULE}-step schedule runs")
    return Img2ImgSteps(schedule=schedule_length(1, strength), run=1, recorded=1)


def check_size(studio: Any, config: Any) -> tuple[int, int]:
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


def second_pass_config(studio: Any, recipe: Any) -> Any:
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
    from .inpaint import supported_rescale

    kind = "controlnet_img2img" if recipe.pose is not None else "img2img"
    changes["guidance_rescale"] = supported_rescale(studio, kind, recipe.guidance_rescale)
    return recipe.replace(**changes)


def upscale(studio: Any, image: Any, latents: Any, settings: dict, size: tuple[int, int]) -> Any:
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


def apply_hires(studio: Any, config: Any, result: Any, progress: Callable | None = None, cancel: Any = None) -> Any:
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
