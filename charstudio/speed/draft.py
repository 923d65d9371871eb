"""Draft mode: a recipe drawn with the fastest setting the loaded model supports, and ``finish``,
the same recipe (seed, prompt, pose, LoRAs) re-drawn at full quality.

`choose` picks, in this order: the preset named by the caller; a few-step LoRA the studio has
loaded; on mini, its own 4-step LoRA ("mini-lcm") when its file is there; otherwise the feature
cache (charstudio.speed.cache, every ``CACHE_INTERVAL``-th step in full) with fewer steps.
`make_draft` writes the choice into the recipe and keeps under ``draft["full"]`` what `finish`
restores; a draft recipe read back from a PNG loads its LoRA by itself (`ensure_draft_lora`,
called where recipes are checked before drawing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, InputFileError
from ..recipe.config import GenerationConfig
from ..recipe.speed import FULL_FIELDS
from ..schedulers import SCHEDULERS
from .presets import (FewStepPreset, cached, check_family, get_preset, is_non_commercial, loaded_preset, log_licence,
                      preset_file, same_file)

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)

CACHE_PRESET = "feature-cache"  # the draft record's preset when no few-step LoRA is used
CACHE_INTERVAL = 3  # the deep blocks run in full every 3rd step (DeepCache's N=3)
# The cached draft runs half the recipe's steps, never fewer than 8 (nor more than the recipe's own).
# Measured on mini (README, draft mode): hair colour 100% and pose IoU 0.71 at 10 and at 8 cached
# steps, as at its default 20; the half leaves a margin for models less forgiving than mini.
CACHE_STEP_FRACTION = 0.5
MIN_CACHE_STEPS = 8
SPEEDS = ("draft", "full")


@dataclass(frozen=True)
class DraftChoice:
    """What draft mode uses on a studio: a few-step LoRA preset, or the feature cache (preset None)."""

    method: str  # "lora" or "cache"
    preset: FewStepPreset | None
    reason: str  # why this one, said to the user


def choose(studio: Studio, preset: str | None = None) -> DraftChoice:
    """The fastest draft setting ``studio`` supports (see the module docstring)."""
    if preset is not None:
        p = get_preset(preset)
        check_family(studio, p)
        return DraftChoice("lora", p, f"the {p.name!r} preset was asked for")
    p = loaded_preset(studio)
    if p is not None and p.family in (studio.family.name, "any"):
        return DraftChoice("lora", p, f"its few-step LoRA {p.name!r} is loaded")
    mini = get_preset("mini-lcm")
    if studio.model_id == "mini" and cached(mini):
        return DraftChoice("lora", mini, "mini's own 4-step LoRA ships with charstudio")
    return DraftChoice("cache", None, "no few-step LoRA is loaded or named for this model")


def cache_steps(steps: int) -> int:
    """The cached draft's step count for a recipe of ``steps``."""
    return min(steps, max(MIN_CACHE_STEPS, round(steps * CACHE_STEP_FRACTION)))


def make_draft(studio: Studio, config: GenerationConfig, preset: str | None = None) -> GenerationConfig:
    """``config`` as a draft: the chosen preset's steps, scheduler, timesteps and guidance, its LoRA
    added to ``loras`` at its weight (loaded, not switched on), and the ``draft`` record whose
    ``full`` holds what `finish` restores. A draft recipe is finished first, then drafted again."""
    if config.draft:
        config = finish(config)
    choice = choose(studio, preset)
    full = {key: getattr(config, key) for key in FULL_FIELDS}
    if choice.method == "cache":
        record = {"preset": CACHE_PRESET, "method": "cache", "lora": None, "source": None, "licence": None,
                  "full": full}
        draft = config.replace(num_inference_steps=cache_steps(config.num_inference_steps), timesteps=None,
                               feature_cache={"interval": CACHE_INTERVAL}, draft=record)
    else:
        p = choice.preset
        assert p is not None
        adapter, file = _load(studio, p)
        record = {"preset": p.name, "method": "lora", "lora": adapter, "source": str(file), "licence": p.licence,
                  "full": full}
        draft = config.replace(num_inference_steps=p.steps, scheduler=p.scheduler,
                               timesteps=list(p.timesteps) if p.timesteps else None,
                               guidance_scale=p.guidance_scale, guidance_rescale=0.0, feature_cache=None,
                               loras={**config.loras, adapter: p.weight}, draft=record)
    log.info("%s (%s)", describe(draft), choice.reason)
    return draft


def finish(config: GenerationConfig) -> GenerationConfig:
    """A draft recipe at full quality: the settings it was drafted from, the same seed, prompt, pose
    and other LoRAs, without the draft LoRA. A recipe that is no draft comes back as it is."""
    if not config.draft:
        return config
    draft = config.draft
    loras = {name: w for name, w in config.loras.items() if name != draft.get("lora")}
    return config.replace(**draft.get("full", {}), loras=loras, draft=None)


def describe(config: GenerationConfig) -> str:
    """One line saying how the recipe draws, e.g. "draft: mini-lcm LoRA, 4 steps, LCM, CFG 1"."""
    sampler = SCHEDULERS[config.scheduler].label
    # diffusers runs no CFG at guidance <= 1; A1111 calls that "CFG 1".
    cfg = f"CFG {max(config.guidance_scale, 1.0):g}"
    tail = f"{config.num_inference_steps} steps, {sampler}, {cfg}"
    draft = config.draft
    if not draft:
        return f"full quality: {tail}"
    if draft.get("method") == "cache":
        interval = (config.feature_cache or {}).get("interval", CACHE_INTERVAL)
        return f"draft: feature cache (every {interval} steps in full), {tail}"
    nc = " (non-commercial licence)" if is_non_commercial(draft.get("licence")) else ""
    timesteps = f", timesteps {config.timesteps}" if config.timesteps else ""
    return f"draft: {draft['preset']} LoRA, {tail}{timesteps}{nc}"


def describe_choice(choice: DraftChoice) -> str:
    """`choose`'s answer on one line, before any recipe is made (what the CLI says as it starts)."""
    p = choice.preset
    if p is None:
        return (f"draft: feature cache (every {CACHE_INTERVAL} steps in full) and {CACHE_STEP_FRACTION:.0%} of the "
                f"steps, at least {MIN_CACHE_STEPS} ({choice.reason})")
    sampler = SCHEDULERS[p.scheduler].label
    timesteps = f", timesteps {list(p.timesteps)}" if p.timesteps else ""
    return (f"draft: {p.name} LoRA, {p.steps} steps, {sampler}, CFG {max(p.guidance_scale, 1.0):g}{timesteps} "
            f"({choice.reason})")


def ensure_draft_lora(studio: Studio, config: GenerationConfig) -> None:
    """Load a draft recipe's few-step LoRA when the studio has not loaded it: from the recorded
    ``draft.source``, else the preset's own file (shipped or in the hub cache)."""
    draft = config.draft
    if not draft or draft.get("method") != "lora" or not draft.get("lora"):
        return
    if draft["lora"] in studio.loaded_loras or draft["lora"] not in config.loras:
        return
    preset = get_preset(draft["preset"], "draft.preset")
    check_family(studio, preset)
    source = Path(str(draft.get("source") or "")).expanduser()
    try:
        file = source if draft.get("source") and source.is_file() else preset_file(preset)
    except InputFileError as exc:
        raise ConfigError("draft.source", draft.get("source"), f"the draft's LoRA is not here: {exc}") from None
    studio.lora_set.load_off(file, draft["lora"])
    log_licence(preset, file)


def _load(studio: Studio, preset: FewStepPreset) -> tuple[str, Path]:
    """The preset's LoRA loaded (off) under its adapter name, and its file."""
    rec = studio.loaded_loras.get(preset.adapter)
    if rec is not None:
        return preset.adapter, rec.source
    for name, rec in studio.loaded_loras.items():  # loaded by the user under another name
        if same_file(rec.source, preset):
            return name, rec.source
    file = preset_file(preset)
    adapter = studio.lora_set.load_off(file, preset.adapter)
    log_licence(preset, file)
    return adapter, file


def draft_settings(settings: dict[str, Any]) -> tuple[bool, str | None]:
    """Pop ``speed`` and ``draft_preset`` from make_config's settings: (draft wanted, preset)."""
    speed = settings.pop("speed", None)
    preset = settings.pop("draft_preset", None)
    if speed in (None, "default") and preset is not None:
        speed = "draft"  # naming a preset asks for a draft
    if speed == "max":
        raise ConfigError("speed", speed, "the fast path that keeps pixels is a setting of the studio: "
                                          "studio.set_speed('max') (or from_pretrained(..., speed='max')); "
                                          "recipes take speed='draft' or 'full'")
    if speed not in (None, "default", *SPEEDS):
        raise ConfigError("speed", speed, "'draft' (the fastest setting the model supports) or 'full'")
    if speed == "full" and preset is not None:
        raise ConfigError("draft_preset", preset, "needs speed='draft' (or leave speed out)")
    return speed == "draft", preset
