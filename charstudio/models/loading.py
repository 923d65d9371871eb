"""Loading models: the only place that calls `from_pretrained` / `from_single_file`.

A model is named by a preset (`mini`, `tiny`, `sd15`), a hub id (`org/name`), a local diffusers
folder, or a single-file checkpoint. Only `.safetensors` files and diffusers folders load by
default; pickled `.ckpt`/`.pt`/`.bin` files can run code when unpickled, so they need an
explicit `allow_pickle=True`, and even then diffusers reads them with `weights_only=True`.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from ..errors import ModelLoadError
from ..weights import PICKLE_SUFFIXES
from .family import (
    DEFAULT_FAMILY,
    FAMILIES,
    ModelFamily,
    family_of_folder,
    is_v_prediction_file,
    prediction_scheduler_config,
)
from .hub import first_line as _first_line
from .hub import hub_offline
from .hub import without_internal_advice as _without_internal_advice
from .presets import PRESETS
from .single_file import check_single_file_layout, checkpoint_keys, single_file_error, single_file_setup

log = logging.getLogger(__name__)

__all__ = ["PICKLE_SUFFIXES", "ModelSource", "check_single_file_layout", "checkpoint_keys", "hub_offline",
           "load_components", "load_controlnet", "resolve_model"]


@dataclass(frozen=True)
class ModelSource:
    """What a model name refers to, decided before anything is loaded."""

    kind: Literal["builtin", "hub", "folder", "single_file"]
    location: str  # preset name, hub id or path
    name: str  # what the recipe records
    controlnet: str | None = None  # None: the model family's default OpenPose ControlNet


def packaged_model_dir(name: str) -> Path:
    """Where a model shipped inside the package lives (charstudio/data/<name>)."""
    from importlib import resources

    return Path(str(resources.files("charstudio").joinpath("data", name)))


def resolve_model(model: str, *, allow_pickle: bool = False) -> ModelSource:
    """Work out what `model` names, or raise a one-line error saying what would work."""
    if not isinstance(model, str) or not model.strip():
        raise ModelLoadError(f"model={model!r} is empty: give a preset ({', '.join(PRESETS)}), a hub id, a folder or a .safetensors file")
    model = model.strip()
    if model in PRESETS:
        preset = PRESETS[model]
        if preset.folder:
            folder = packaged_model_dir(preset.folder)
            if not (folder / "model_index.json").is_file():
                raise ModelLoadError(
                    f"model={model!r}: its weights are missing from {folder} (a broken install?): reinstall charstudio, "
                    f"or rebuild them with `python -m charstudio.mini.train --work runs/mini --out {folder}`")
            return ModelSource("folder", str(folder), model, str(folder / "controlnet"))
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
            check_pickled_files(path, "model", allow_pickle)
            # A folder may carry its own ControlNet (as `mini` does); otherwise its family's OpenPose one.
            own = path / "controlnet"
            return ModelSource("folder", str(path), model, str(own) if (own / "config.json").is_file() else None)
        suffix = path.suffix.lower()
        if suffix == ".safetensors":
            return ModelSource("single_file", str(path), model)
        if suffix in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise ModelLoadError(
                    f"model={model!r} is a pickled checkpoint, which can run code when loaded: "
                    "convert it to .safetensors, or opt in with allow_pickle=True (CLI: --allow-pickle) if you trust it")
            return ModelSource("single_file", str(path), model)
        raise ModelLoadError(f"model={model!r} is a file of unknown type: use .safetensors (or .ckpt with allow_pickle=True)")
    if looks_like_path:
        raise ModelLoadError(f"model={model!r}: no such file or folder")
    if model.count("/") == 1 and all(model.split("/")):
        return ModelSource("hub", model, model)
    raise ModelLoadError(
        f"model={model!r} is not a known preset ({', '.join(PRESETS)}), an existing path, or a hub id like 'org/name'")


def pickled_weight_files(folder: Path) -> list[Path]:
    """Pickled weight files in a diffusers folder that would load (no .safetensors beside them)."""
    return [f for f in sorted(folder.rglob("*")) if f.suffix.lower() in PICKLE_SUFFIXES and f.is_file()
            and not any(f.parent.glob("*.safetensors"))]


@contextmanager
def _diffusers_log_level(level: int | None) -> Iterator[None]:
    """Run the block with diffusers' logger at ``level`` (None: as it is)."""
    logger = logging.getLogger("diffusers")
    before = logger.level
    if level is not None:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def check_pickled_files(folder: Path, field: str, allow_pickle: bool) -> None:
    """Refuse a diffusers folder whose weights are pickles (`*.bin`, ...) unless opted in.

    diffusers falls back to a component's pickled file when it has no .safetensors; torch then
    unpickles it. A component folder with both loads the safetensors and is fine.
    """
    files = [] if allow_pickle else pickled_weight_files(folder)
    if files:
        raise ModelLoadError(f"{field}={str(folder)!r}: {files[0].relative_to(folder)} holds pickled weights, which "
                             "can run code when loaded: pickled weights refused; pass --allow-pickle "
                             "(allow_pickle=True) if you trust the file, or convert it to .safetensors")


def _pickle_refused(field: str, location: str, exc: BaseException) -> ModelLoadError | None:
    """A one-line error when torch's weights-only unpickler refused a file (it prints six lines)."""
    import pickle

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
            return ModelLoadError(f"{field}={location!r} holds pickled weights with more than tensors in them "
                                  "(torch's weights-only loader refused them): the file may run code; use a "
                                  ".safetensors copy from a source you trust")
        exc = exc.__cause__ or exc.__context__
    return None


def _hub_error(what: str, location: str, exc: Exception) -> ModelLoadError:
    if hub_offline():
        return ModelLoadError(
            f"{what}={location!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it: "
            "unset HF_HUB_OFFLINE (with network), or use a local folder / .safetensors file, or a built-in model ('mini', 'tiny')")
    return ModelLoadError(f"{what}={location!r} could not be loaded: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """The ``from_pretrained`` keyword for a torch dtype in the installed diffusers.

    diffusers renamed ``torch_dtype`` to ``dtype`` (huggingface/diffusers#14205, 2026) and warns on
    the old name. The releases before it ignore an unknown ``dtype`` with a warning and load
    float32, so the new name is used only where diffusers has the helper that resolves it."""
    import diffusers.utils

    return {"dtype" if hasattr(diffusers.utils, "_resolve_dtype") else "torch_dtype": dtype}


def _real_architecture(family_name: str) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        from .architectures import build_real_architecture

        return build_real_architecture(FAMILIES[family_name])
    return build


def _tiny(sdxl: bool) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        from .tiny import build_tiny_components, build_tiny_sdxl_components

        return (build_tiny_sdxl_components if sdxl else build_tiny_components)()
    return build


# The models built in code (no files): the toy ones and the real architectures with random weights.
BUILTIN_BUILDERS: dict[str, Callable[[], dict[str, Any]]] = {
    "tiny": _tiny(False), "tiny-sdxl": _tiny(True),
    "sd15-arch": _real_architecture("sd1"), "sdxl-arch": _real_architecture("sdxl"),
}


def load_components(source: ModelSource, *, dtype: Any, config: str | None = None,
                    prediction_type: str | None = None) -> dict[str, Any]:
    """Load the components of `source` (its family's `component_names`: tokenizers, text
    encoders, unet, vae, scheduler), SD 1.x or SDXL as the model itself says.

    `config` applies to single-file checkpoints only: a diffusers folder or hub id of the base
    model whose component configs (and tokenizer and scheduler) describe the file. Without it,
    the family's base configs shipped in the package (SD 1.5's or SDXL base's) and the real CLIP
    tokenizers built offline are used, so a standard checkpoint loads with no hub access.

    `prediction_type` ("epsilon" | "v_prediction") overrides what the model says; without it a
    preset's, else a single file's `v_pred` key, else the model's scheduler config decides. A
    v-prediction model gets zero-terminal-SNR betas and trailing timesteps too.
    """
    from ..validation import check_choice

    if prediction_type is not None:
        check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction"))
    if prediction_type is None and source.name in PRESETS:
        prediction_type = PRESETS[source.name].prediction_type
    if config is not None and source.kind != "single_file":
        raise ModelLoadError(f"config={config!r} only applies to single-file checkpoints (.safetensors): "
                             f"model={source.name!r} carries its own configs, so leave config unset")
    if source.kind == "builtin":
        return _load_builtin(source, dtype, prediction_type)
    family, extra, prediction_type = _family_of_source(source, config, prediction_type)
    pipe = _load_pipeline(source, family, extra, dtype, config)
    # 3. Keep only the parts we share across pipelines; the safety checker is the caller's choice.
    comps = {name: getattr(pipe, name) for name in family.component_names}
    _check_all_loaded(comps, source.location, config)
    comps = _with_fp16_vae(comps, source, dtype)
    return _with_prediction_type(comps, prediction_type, source.location)


def _load_builtin(source: ModelSource, dtype: Any, prediction_type: str | None) -> dict[str, Any]:
    """A model built in code (tiny, tiny-sdxl, the random-weight real architectures)."""
    import torch

    comps = BUILTIN_BUILDERS[source.location]()
    if dtype != torch.float32:  # built in fp32; casting a no-op makes diffusers warn needlessly
        for module in comps.values():
            if isinstance(module, torch.nn.Module):
                module.to(dtype=dtype)
    return _with_prediction_type(_with_fp16_vae(comps, source, dtype), prediction_type, source.location)


def _family_of_source(source: ModelSource, config: str | None,
                      prediction_type: str | None) -> tuple[Any, dict[str, Any], str | None]:
    """1. A single file's keys tell its family (models.single_file), with the loader's extra
    arguments and its `v_pred` key (NoobAI v-pred). A folder names its pipeline class; a hub id is
    taken as the default family's unless a preset says."""
    extra: dict[str, Any] = {}
    family = DEFAULT_FAMILY
    if source.kind == "single_file":
        family, extra, keys = single_file_setup(source.location, config)
        if prediction_type is None and is_v_prediction_file(keys):
            prediction_type = "v_prediction"
    elif source.kind == "folder":
        family = family_of_folder(source.location)
    elif source.name in PRESETS:
        family = FAMILIES[PRESETS[source.name].family]
    return family, extra, prediction_type


def _load_pipeline(source: ModelSource, family: Any, extra: dict[str, Any], dtype: Any, config: str | None) -> Any:
    """2. Load through the family's pipeline class so every component gets the right class and config."""
    import pickle

    import diffusers
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    pipeline_class = getattr(diffusers, family.pipelines["txt2img"])
    common = dict(**dtype_kwarg(dtype), **{k: v for k, v in family.pipeline_options.items() if k != "feature_extractor"})
    # An opted-in folder of pickled weights: diffusers first looks for .safetensors and logs
    # each miss at error level before it falls back; the user already chose the fallback.
    quiet = source.kind == "folder" and bool(pickled_weight_files(Path(source.location)))
    try:
        with _diffusers_log_level(logging.CRITICAL if quiet else None):
            if source.kind == "single_file":
                return pipeline_class.from_single_file(source.location, **common, **extra)
            return pipeline_class.from_pretrained(source.location, **common)
    except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError, pickle.UnpicklingError) as exc:
        refused = _pickle_refused("model", source.location, exc)
        if refused is not None:
            raise refused from exc
        if source.kind == "hub":
            raise _hub_error("model", source.location, exc) from exc
        if source.kind == "single_file":
            raise single_file_error(exc, source.location, family, config, extra) from exc
        raise ModelLoadError(f"model={source.location!r} could not be loaded as an {family.label} model: "
                             f"{_without_internal_advice(_first_line(exc))}") from exc


def _check_all_loaded(comps: dict[str, Any], location: str, config: str | None) -> None:
    """Refuse a load that left weights unfilled (on the meta device): diffusers' single-file
    loader does not always say when a part of the file did not fit a component."""
    for name, module in comps.items():
        empty = [n for n, p in getattr(module, "named_parameters", lambda: [])() if p.is_meta]
        if empty:
            raise ModelLoadError(f"model={location!r}: {len(empty)} weights of its {name} were not in the file "
                                 f"(e.g. {empty[0]}){f' or do not match config={config!r}' if config else ''}: "
                                 "the file is incomplete or of another architecture")


def _with_fp16_vae(comps: dict[str, Any], source: ModelSource, dtype: Any) -> dict[str, Any]:
    """`comps` with the preset's fp16-safe VAE when running in fp16 (SDXL's own overflows there).

    Not in the cache offline: the model's own VAE stays, and `Studio.decode` retries in fp32."""
    import torch

    preset = PRESETS.get(source.name)
    if preset is None or preset.fp16_vae is None or dtype != torch.float16:
        return comps
    from diffusers import AutoencoderKL

    try:
        comps["vae"] = AutoencoderKL.from_pretrained(preset.fp16_vae, **dtype_kwarg(dtype))
        log.info("%s: fp16 VAE %s", source.name, preset.fp16_vae)
    except (OSError, ValueError) as exc:
        log.warning("the fp16-safe VAE %s could not be loaded (%s): using %s's own VAE, which is decoded in fp32 "
                    "when fp16 overflows", preset.fp16_vae, _first_line(exc), source.name)
    return comps


def _with_prediction_type(comps: dict[str, Any], prediction_type: str | None, source: str) -> dict[str, Any]:
    """`comps` with its scheduler set up for `prediction_type` (None: as loaded)."""
    if prediction_type is not None:
        log.info("%s: %s scheduler", source, prediction_type)
        sched = comps["scheduler"]
        comps["scheduler"] = type(sched).from_config(prediction_scheduler_config(sched.config, prediction_type))
    return comps


def load_controlnet(location: str, *, dtype: Any, allow_pickle: bool = False, family: ModelFamily | None = None):
    """Load an OpenPose ControlNet, or a union ControlNet (hub id or local folder); with
    `family`, one of another family is refused from its config before its weights load."""
    import pickle

    from diffusers import ControlNetModel, ControlNetUnionModel

    folder = Path(location).expanduser()
    if folder.is_dir():
        check_pickled_files(folder, "controlnet", allow_pickle)
    try:
        config = ControlNetModel.load_config(location)
        if family is not None:
            family.check_controlnet(config, location)
        # A union ControlNet (xinsir's controlnet-union-sdxl-1.0) runs in its OpenPose mode.
        cls = ControlNetUnionModel if config.get("_class_name") == "ControlNetUnionModel" else ControlNetModel
        return cls.from_pretrained(location, **dtype_kwarg(dtype))
    except (OSError, EnvironmentError, ValueError, pickle.UnpicklingError) as exc:
        refused = _pickle_refused("controlnet", location, exc)
        if refused is not None:
            raise refused from exc
        if Path(location).expanduser().exists():
            raise ModelLoadError(f"controlnet={location!r} could not be loaded: {exc}") from exc
        raise _hub_error("controlnet", location, exc) from exc
