"""The one img2img steps guard: how many steps an img2img-like pass runs and what its recipe records.

Every pass that starts from a picture (from_photo, inpainting on both UNets, the detail pass's
redraws, the hires fix's second pass, and these inside sheets) goes through `img2img_steps`.
It lives with the recipe, not the engine, because it is recipe arithmetic (no torch): it decides
which strengths a recipe field may hold (the detail and inpaint schemas refuse a strength too low
for one step before anything is drawn) and the step count a recipe records (1 where the guard
raised it), so a recipe re-runs the picture it describes. The engine and the runners ask it; the
recipe never asks the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from ..validation import check_float, check_int

# Schedulers are set up for at most this many steps (GenerationConfig's own limit).
MAX_SCHEDULE = 1000


def schedule_length(steps: int, strength: float) -> int:
    """The scheduler length whose last `steps` steps diffusers' img2img runs at `strength` (it
    runs int(length * strength) of them)."""
    length = max(steps, math.ceil(steps / strength))
    while int(length * strength) < steps:  # float rounding: 0.3 * 10 is 2.9999...
        length += 1
    while length > steps and int((length - 1) * strength) >= steps:
        length -= 1
    return length


def min_strength(run: int) -> float:
    """The smallest strength at which ``run`` steps of an img2img-like pass run at all: diffusers
    runs ``int(schedule * strength)`` steps of a schedule of at most `MAX_SCHEDULE`."""
    strength = run / MAX_SCHEDULE
    while int(MAX_SCHEDULE * strength) < run:  # float rounding
        strength = math.nextafter(strength, math.inf)
    return strength


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
        raise ConfigError(field, strength, f"at least {min_strength(1):g}: below it not one step of a "
                                           f"{MAX_SCHEDULE}-step schedule runs")
    return Img2ImgSteps(schedule=schedule_length(1, strength), run=1, recorded=1)
