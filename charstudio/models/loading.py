"""Loading models: the only place that calls `from_pretrained` / `from_single_file`.

A model is named by a preset (`tiny`, `sd15`), a hub id (`org/name`), a local diffusers
folder, or a single-file checkpoint. Only `.safetensors` files and diffusers folders load by
default; pickled `.ckpt`/`.pt`/`.bin` files can run code when unpickled, so they need an
explicit `allow_pickle=True`, and even then diffusers reads them with `weights_only=True`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ModelLoadError
from .presets import PRESETS, SD15_OPENPOSE_CONTROLNET

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
COMPONENT_NAMES = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")


@dataclass(frozen=True)
class ModelSource:
    """What a model name refers to, decided before anything is loaded."""

    kind: Literal["builtin", "hub", "folder", "single_file"]
    location: str  # preset name, hub id or path
    name: str  # what the recipe records
    controlnet: str | None = None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_model(model: str, *, allow_pickle: bool = False) -> ModelSource:
    """Work out what `model` names, or raise a one-line error saying what would work."""
    if not isinstance(model, str) or not model.strip():
        raise ModelLoadError(f"model={model!r} is empty: give a preset ({', '.join(PRESETS)}), a hub id, a folder or a .safetensors file")
    model = model.strip()
    if model in PRESETS:
        preset = PRESETS[model]
        if preset.builtin:
            return ModelSource("builtin", model, model)
        return ModelSource("hub", preset.repo, model, preset.controlnet)

    path = Path(model).expanduser()
    looks_like_path = path.suffix.lower() in (".safetensors",) + PICKLE_SUFFIXES or model.startswith((".", "/", "~")) \
        or os.sep in model and path.exists() or model.count("/") > 1
    if path.exists():
        if path.is_dir():
            if not (path / "model_index.json").exists():
                raise ModelLoadError(f"model={model!r} is a folder without model_index.json: "
                                     "give a diffusers-format folder (save_pretrained) or a .safetensors file")
            return ModelSource("folder", str(path), model, SD15_OPENPOSE_CONTROLNET)
        suffix = path.suffix.lower()
        if suffix == ".safetensors":
            return ModelSource("single_file", str(path), model, SD15_OPENPOSE_CONTROLNET)
        if suffix in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise ModelLoadError(
                    f"model={model!r} is a pickled checkpoint, which can run code when loaded: "
                    "convert it to .safetensors, or opt in with allow_pickle=True (CLI: --allow-pickle) if you trust it")
            return ModelSource("single_file", str(path), model, SD15_OPENPOSE_CONTROLNET)
        raise ModelLoadError(f"model={model!r} is a file of unknown type: use .safetensors (or .ckpt with allow_pickle=True)")
    if looks_like_path:
        raise ModelLoadError(f"model={model!r}: no such file or folder")
    if model.count("/") == 1 and all(model.split("/")):
        return ModelSource("hub", model, model, SD15_OPENPOSE_CONTROLNET)
    raise ModelLoadError(
        f"model={model!r} is not a known preset ({', '.join(PRESETS)}), an existing path, or a hub id like 'org/name'")


def _hub_error(what: str, location: str, exc: Exception) -> ModelLoadError:
    if _offline():
        return ModelLoadError(
            f"{what}={location!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it: "
            "unset HF_HUB_OFFLINE (with network), or use a local folder / .safetensors file, or model='tiny'")
    return ModelLoadError(f"{what}={location!r} could not be loaded: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def load_components(source: ModelSource, *, dtype: Any) -> dict[str, Any]:
    """Load the SD 1.x components (tokenizer, text_encoder, unet, vae, scheduler) for `source`."""
    if source.kind == "builtin":
        from .tiny import build_tiny_components

        import torch

        comps = build_tiny_components()
        if dtype != torch.float32:  # built in fp32; casting a no-op makes diffusers warn needlessly
            for name in ("text_encoder", "unet", "vae", "controlnet"):
                comps[name].to(dtype=dtype)
        return comps

    from diffusers import StableDiffusionPipeline

    # 1. Load through the pipeline class so every component gets the right class and config.
    common = dict(torch_dtype=dtype, safety_checker=None, requires_safety_checker=False)
    try:
        if source.kind == "single_file":
            pipe = StableDiffusionPipeline.from_single_file(source.location, **common)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(source.location, **common)
    except (OSError, EnvironmentError, ValueError) as exc:
        if source.kind == "hub":
            raise _hub_error("model", source.location, exc) from exc
        raise ModelLoadError(f"model={source.location!r} could not be loaded as an SD 1.x checkpoint: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    # 2. Keep only the parts we share across pipelines; the safety checker is the caller's choice.
    return {name: getattr(pipe, name) for name in COMPONENT_NAMES}


def load_controlnet(location: str, *, dtype: Any):
    """Load an OpenPose ControlNet (hub id or local folder)."""
    from diffusers import ControlNetModel

    try:
        return ControlNetModel.from_pretrained(location, torch_dtype=dtype)
    except (OSError, EnvironmentError, ValueError) as exc:
        if Path(location).expanduser().exists():
            raise ModelLoadError(f"controlnet={location!r} could not be loaded: {exc}") from exc
        raise _hub_error("controlnet", location, exc) from exc
