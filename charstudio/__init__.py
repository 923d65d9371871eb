"""charstudio: a character design studio for Jupyter, built on Hugging Face diffusers.

The public API is loaded lazily, so `import charstudio` stays fast and does not import torch.

    from charstudio import Studio
    studio = Studio.from_pretrained("mini")          # or "tiny", "sd15", a hub id, a folder, a .safetensors file
    result = studio.generate("aiko", style="watercolor", seed=42)
    result.save("outputs")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Studio": "charstudio.studio",
    "Result": "charstudio.result",
    "GenerationConfig": "charstudio.config",
    "Character": "charstudio.character",
    "Style": "charstudio.character",
    "load_character": "charstudio.character",
    "list_characters": "charstudio.character",
    "load_styles": "charstudio.character",
    "compose_prompt": "charstudio.character",
    "CancelToken": "charstudio.callbacks",
    "StepProgress": "charstudio.callbacks",
    "PRESETS": "charstudio.models.presets",
    "Pose": "charstudio.pose",
    "load_pose": "charstudio.pose",
    "list_poses": "charstudio.pose",
    "SheetResult": "charstudio.sheets",
    "LoraTrainingConfig": "charstudio.training",
    "train_lora": "charstudio.training",
    "CharstudioError": "charstudio.errors",
    "ConfigError": "charstudio.errors",
    "ModelLoadError": "charstudio.errors",
    "CardError": "charstudio.errors",
    "GenerationCancelled": "charstudio.errors",
    "OutputError": "charstudio.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'charstudio' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
