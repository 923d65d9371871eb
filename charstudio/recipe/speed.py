"""The speed fields of a recipe (draft mode, issue 38), each checked and normalised here.

- ``timesteps``: the exact timesteps a few-step schedule runs (DMD2's 999, 749, 499, 249), or
  None for the scheduler's own spacing of ``num_inference_steps``;
- ``feature_cache``: DeepCache-style reuse of the UNet's deep features (charstudio.speed.cache):
  ``{"interval": N, "branch": B}``, the deep blocks run in full every N-th step, and below the
  skip branch B (0: the outermost) they are reused in between; None runs every block each step;
- ``draft``: the record of a draft recipe (charstudio.speed.draft): which preset, which few-step
  LoRA (adapter, file, licence), and under ``full`` the settings a full-quality re-draw
  ("finish") goes back to;
- ``quantize``: the weight quantization the picture was drawn with (None: full precision,
  "int8": weight-only int8, charstudio.speed.quantize). Recorded like ``model``: a re-run on a
  studio loaded otherwise warns, as its pixels drift by a few levels.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..validation import check_int

QUANTIZE_MODES = ("int8",)
MAX_CACHE_INTERVAL = 50
MAX_CACHE_BRANCH = 16  # validated again against the loaded UNet (speed.cache.check_branch)
# What a draft record's "full" may hold: the recipe fields a finish puts back.
FULL_FIELDS = ("num_inference_steps", "guidance_scale", "guidance_rescale", "scheduler", "timesteps",
               "feature_cache")


def check_timesteps(value: Any, config: Any) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError("timesteps", value, "a list of whole numbers from high to low, e.g. [999, 749, 499, 249], "
                                              "or None for the scheduler's own spacing")
    steps = [check_int(f"timesteps[{i}]", t, 0, 9999) for i, t in enumerate(value)]
    if any(a <= b for a, b in zip(steps, steps[1:])):
        raise ConfigError("timesteps", value, "must run strictly from high to low, e.g. [999, 749, 499, 249]")
    if len(steps) != config.num_inference_steps:
        raise ConfigError("timesteps", value, f"gives {len(steps)} steps but num_inference_steps is "
                                              f"{config.num_inference_steps}: make them agree")
    return steps


def check_feature_cache(value: Any, config: Any = None) -> dict | None:
    if value is None or value is False:
        return None
    if isinstance(value, bool) or isinstance(value, (int, float)):
        value = {"interval": value}
    if not isinstance(value, dict) or set(value) - {"interval", "branch"}:
        raise ConfigError("feature_cache", value, "{'interval': N, 'branch': B} (N >= 2 steps between full UNet "
                                                  "runs, B the skip branch, 0 the outermost), a number N, or None")
    interval = check_int("feature_cache.interval", value.get("interval", 3), 1, MAX_CACHE_INTERVAL)
    if interval == 1:
        return None  # every step in full: no cache
    branch = check_int("feature_cache.branch", value.get("branch", 0), 0, MAX_CACHE_BRANCH)
    return {"interval": interval, "branch": branch}


def check_quantize(value: Any, config: Any = None) -> str | None:
    if value is None or value == "none":
        return None
    if value not in QUANTIZE_MODES:
        raise ConfigError("quantize", value, f"one of {', '.join(QUANTIZE_MODES)}, or None for full precision")
    return value


def check_draft(value: Any, config: Any = None) -> dict | None:
    if not value:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("preset"), str) or not value["preset"].strip():
        raise ConfigError("draft", value, "a draft record {preset, method, lora, source, licence, full} "
                                          "(charstudio.speed.draft writes it), or None")
    full = value.get("full", {})
    if not isinstance(full, dict) or set(full) - set(FULL_FIELDS):
        raise ConfigError("draft.full", full, f"a mapping of the recipe fields a finish restores: {', '.join(FULL_FIELDS)}")
    return dict(value, full=dict(full))


def check_speed_fields(config: Any) -> None:
    """Validate and normalise the recipe's speed fields in place (called by GenerationConfig)."""
    config.timesteps = check_timesteps(config.timesteps, config)
    config.feature_cache = check_feature_cache(config.feature_cache, config)
    config.quantize = check_quantize(config.quantize, config)
    config.draft = check_draft(config.draft, config)
