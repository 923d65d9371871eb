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

This module is the field's schema (check, normalise, constants, sizes; no torch). The passes
themselves run in `charstudio.workflows.hires`; the steps guard every img2img-like pass shares is
`charstudio.recipe.steps.img2img_steps`.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError
from ..validation import check_choice, check_float, check_int
from .steps import MAX_SCHEDULE, min_strength

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
    check_second_pass(settings["strength"], second_pass_steps(config, settings))
    return settings


def check_second_pass(strength: float, run: int, field: str = "hires.strength",
                      steps_field: str = "hires.steps") -> None:
    """Refuse a strength at which the second pass's ``run`` steps cannot run (they would need a
    schedule longer than `MAX_SCHEDULE`); the advice gives the smallest strength that runs them
    (`steps.min_strength`). ``field`` and ``steps_field`` name the settings (the CLI's flags)."""
    if int(MAX_SCHEDULE * strength) >= run:  # (a tiny strength: run / strength may be infinite)
        return
    fewer = f" or fewer steps ({steps_field})" if run > 1 else ""
    raise ConfigError(field, strength, f"running {run} step{'s' if run > 1 else ''} at this strength needs a "
                      f"schedule of more than {MAX_SCHEDULE} steps (the most there are): use a strength of at "
                      f"least {min_strength(run):g}{fewer}")


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
