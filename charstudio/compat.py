"""Every private or undocumented diffusers / peft / transformers internal charstudio relies on.

Nothing else in the package touches such an internal: when a release moves one, this file (and
its test, tests/test_compat.py, one test per entry) is where it breaks and gets fixed.
pyproject.toml caps diffusers, peft and transformers below their next minor release, so a new
release is taken only after these tests have passed on it.

Entries:
- `remove_text_encoder_adapter`: diffusers.utils.peft_utils.delete_adapter_layers, and the
  transformers PEFT-integration attributes ``peft_config`` / ``_hf_peft_config_loaded``.
- `remove_all_text_encoder_adapters`: diffusers.loaders.lora_base._remove_text_encoder_monkey_patch.
- `forget_step_index`: a scheduler's ``_step_index`` (Euler-type and DPM schedulers).
"""

from __future__ import annotations

from typing import Any


def _clear_empty_peft_config(model: Any) -> None:
    # transformers' PEFT integration reads `_hf_peft_config_loaded` to decide whether the model
    # has adapters; with no adapter left both must go, or the next load_adapter is refused.
    config = getattr(model, "peft_config", None)
    if config is not None and not config:
        del model.peft_config
    if getattr(model, "peft_config", None) is None:
        model._hf_peft_config_loaded = None


def remove_text_encoder_adapter(text_encoder: Any, adapter_name: str) -> None:
    """Take one LoRA adapter out of a transformers text encoder, leaving the others.

    diffusers' `delete_adapter_layers` already drops the adapter's config entry (and the whole
    ``peft_config`` when it was the last) for models with the transformers integration flag set,
    but not for others; both cases end in the same state here.
    """
    from diffusers.utils.peft_utils import delete_adapter_layers

    if adapter_name not in (getattr(text_encoder, "peft_config", None) or {}):
        return
    delete_adapter_layers(text_encoder, adapter_name)
    config = getattr(text_encoder, "peft_config", None)
    if config is not None:
        config.pop(adapter_name, None)
    _clear_empty_peft_config(text_encoder)


def remove_all_text_encoder_adapters(text_encoder: Any) -> None:
    """Take every LoRA adapter out of a text encoder, restoring its plain layers."""
    from diffusers.loaders.lora_base import _remove_text_encoder_monkey_patch

    if getattr(text_encoder, "peft_config", None):
        _remove_text_encoder_monkey_patch(text_encoder)
    _clear_empty_peft_config(text_encoder)


def forget_step_index(scheduler: Any) -> None:
    """Make the scheduler look up its step index from the next timestep it is given.

    Needed when a loop calls `scale_model_input` for several timesteps without `step` (reference
    attention records the reference's features that way): Euler-type schedulers otherwise keep
    scaling by the sigma of the first timestep.
    """
    if hasattr(scheduler, "_step_index"):
        scheduler._step_index = None
