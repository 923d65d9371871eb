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
from .family import FAMILIES, SD1, SDXL, ModelFamily, family_of_folder, is_v_prediction_file, prediction_scheduler_config
from .presets import PRESETS

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModelSource:
    """What a model name refers to, decided before anything is loaded."""

    kind: Literal["builtin", "hub", "folder", "single_file"]
    location: str  # preset name, hub id or path
    name: str  # what the recipe records
    controlnet: str | None = None  # None: the model family's default OpenPose ControlNet


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` forbids downloads (the one place charstudio reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


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


def checkpoint_keys(path: str) -> list[str]:
    """The tensor names in a single-file checkpoint, read without loading its weights.

    `.safetensors`: only the header is read. Pickled files are opened as diffusers opens them,
    with `weights_only=True` (memory-mapped, so tensors are not read), after the caller opted in.
    """
    name = Path(path).name
    if path.lower().endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                return list(f.keys())
        except Exception as exc:  # safetensors raises its own SafetensorError for bad headers
            raise ModelLoadError(f"model={path!r} is not a readable .safetensors file ({_first_line(exc)}): "
                                 f"re-download {name} or use another checkpoint") from exc
    import zipfile

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # UnpicklingError for anything but tensors and plain containers
        raise ModelLoadError(f"model={path!r} cannot be read with weights_only=True ({_first_line(exc)}): "
                             f"convert {name} to .safetensors where you trust it, or use a .safetensors file") from exc
    while isinstance(state, dict) and "state_dict" in state:  # as diffusers unwraps Lightning checkpoints
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"model={path!r} holds a {type(state).__name__}, not a dict of tensors: "
                             "use an SD 1.x .safetensors checkpoint")
    return [k for k in state if isinstance(k, str)]


def check_single_file_layout(path: str, keys: list[str]) -> ModelFamily:
    """The family of a single-file checkpoint in the LDM/SGM layout (SD 1.x or SDXL), or a
    one-line ModelLoadError naming the keys that decided it."""
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise ModelLoadError(f"model={path!r} is an SD 2.x checkpoint (OpenCLIP text encoder), and charstudio runs "
                             "SD 1.x and SDXL models: use an SD 1.5 or SDXL .safetensors, a diffusers folder or a preset")
    family = SDXL if any(k.startswith(SDXL.single_file_marker) for k in keys) else SD1
    parts = family.single_file_parts
    missing = [f"{part} ({prefix}*)" for part, prefix in parts.items() if not any(k.startswith(prefix) for k in keys)]
    if not missing:
        return family
    if not any(k.startswith(parts["UNet"]) for k in keys) and \
            any(k.startswith(("lora_unet_", "lora_te")) or ".lora_" in k or "lora_A" in k for k in keys):
        raise ModelLoadError(f"model={path!r} is a LoRA adapter, not a full model: load a base model "
                             "and add the adapter to it with studio.load_lora")
    seen = sorted({k.split(".")[0] for k in keys})
    found = ", ".join(f"{p}.*" for p in seen[:4]) + (", ..." if len(seen) > 4 else "") if keys else "no tensors"
    raise ModelLoadError(
        f"model={path!r} does not have the {family.label} single-file layout: it lacks {', '.join(missing)} keys "
        f"(it has {found}): use an A1111/civitai SD 1.x or SDXL checkpoint, a diffusers folder (save_pretrained) "
        "or a preset")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _shape_mismatch(exc: BaseException) -> str | None:
    """'<tensor>: expected [...], got [...]' when diffusers refused a weight of the wrong shape."""
    import re

    m = re.search(r"(\S+) expected shape torch\.Size\((\[[^]]*\])\), but got torch\.Size\((\[[^]]*\])\)", str(exc))
    return f"{m[1]}: expected {m[2]}, got {m[3]}" if m else None


def _without_internal_advice(text: str) -> str:
    """diffusers' message without its advice about its own loading options (`low_cpu_mem_usage`,
    `ignore_mismatched_sizes`), which a charstudio user cannot pass, and its issue links."""
    import re

    sentences = re.split(r"(?<=\.)\s+", text)
    kept = [s for s in sentences if not re.search(r"low_cpu_mem_usage|ignore_mismatched_sizes|see also|https?://", s)]
    return " ".join(kept).strip() or "its weights do not fit the configs it is read with"


# The tensor whose last dimension diffusers matches to each text encoder's hidden_size when it
# reads a single file (diffusers' CHECKPOINT_KEY_NAMES "clip", "clip_sdxl", "open_clip_sdxl").
_TEXT_WIDTH_KEYS = {
    "sd1": {"text_encoder": "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"},
    "sdxl": {"text_encoder": "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
             "text_encoder_2": "conditioner.embedders.1.model.positional_embedding"},
}


def _text_width_mismatch(path: str, family: ModelFamily, config_dir: str | None) -> str | None:
    """'<tensor> is N wide and <encoder> in the config has hidden_size M' for the first text
    encoder the file and the config folder disagree on; None when it cannot tell (a hub config,
    a pickled file)."""
    import json

    if config_dir is None or not Path(config_dir).is_dir() or not path.lower().endswith(".safetensors"):
        return None
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
            for encoder, key in _TEXT_WIDTH_KEYS[family.name].items():
                try:
                    config = json.loads((Path(config_dir) / encoder / "config.json").read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                hidden = config.get("hidden_size") if isinstance(config, dict) else None
                width = f.get_slice(key).get_shape()[-1] if key in keys else None
                if hidden is not None and width is not None and width != hidden:
                    return f"{key} is {width} wide and the configs' {encoder} has hidden_size {hidden}"
    except Exception:  # a header that cannot be read was reported before loading began
        return None
    return None


def _config_advice(family: ModelFamily, config: str | None) -> str:
    """What a user can do when a single file does not fit the configs it was read with."""
    standard = (f" (or leave it out for a standard {family.label} file: {family.base_model}'s configs are built in)"
                if config else "")
    return (f"pass --config (config=) naming the diffusers folder or hub id of the {family.label} model the file was "
            f"made from{standard}, or use a different file")


def _check_config_family(config: str, family: ModelFamily, location: str) -> None:
    """Refuse a local config folder of the other family before diffusers reads the file with it
    (it would fail on a missing key, e.g. 'label_emb.0.0.weight')."""
    if not Path(config).is_dir():
        return
    theirs = family_of_folder(config)
    if theirs is not family:
        raise ModelLoadError(f"config={config!r} is an {theirs.label} model's folder and model={location!r} is an "
                             f"{family.label} checkpoint: {_config_advice(family, config)}")


def _is_hub_error(exc: BaseException) -> bool:
    """Whether a load failed for lack of hub files (offline, not cached, no network)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__module__.split(".")[0] in ("huggingface_hub", "requests", "httpx", "urllib3"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _check_config(config: str) -> str:
    """A `config=` for a single file: a diffusers folder (returned as a path) or a hub id."""
    path = Path(config).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise ModelLoadError(f"config={config!r} is a folder without model_index.json: give the base model's "
                                 "diffusers-format folder (save_pretrained) or its hub id")
        return str(path)
    if path.exists() or config.startswith((".", "/", "~")) or config.count("/") != 1 or not all(config.split("/")):
        raise ModelLoadError(f"config={config!r} is not a diffusers folder or a hub id like 'org/name': give the base "
                             f"model's diffusers folder or hub id (e.g. {SD1.base_model!r} or {SDXL.base_model!r})")
    return config


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
        import torch

        comps = BUILTIN_BUILDERS[source.location]()
        if dtype != torch.float32:  # built in fp32; casting a no-op makes diffusers warn needlessly
            for module in comps.values():
                if isinstance(module, torch.nn.Module):
                    module.to(dtype=dtype)
        return _with_prediction_type(_with_fp16_vae(comps, source, dtype), prediction_type, source.location)

    # 1. A single file must be an SD 1.x or SDXL checkpoint in the LDM/SGM layout; diffusers would
    #    otherwise guess "SD 1.x" for any keys and fail somewhere deep, or quietly take parts from
    #    `config`. A folder names its pipeline class; a hub id is taken as SD 1.x unless a preset says.
    extra: dict[str, Any] = {}
    family = SD1
    if source.kind == "single_file":
        keys = checkpoint_keys(source.location)
        family = check_single_file_layout(source.location, keys)
        if prediction_type is None and is_v_prediction_file(keys):  # NoobAI v-pred's `v_pred` key
            prediction_type = "v_prediction"
        if config is not None:
            extra["config"] = _check_config(config)
            _check_config_family(extra["config"], family, source.location)
        else:  # the base model's configs shipped in the package, and the real CLIP tokenizers: no hub
            extra = {"config": str(family.config_folder()), **family.real_tokenizers()}
    elif source.kind == "folder":
        family = family_of_folder(source.location)
    elif source.name in PRESETS:
        family = FAMILIES[PRESETS[source.name].family]

    import pickle

    import diffusers
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    # 2. Load through the pipeline class so every component gets the right class and config.
    pipeline_class = getattr(diffusers, family.pipelines["txt2img"])
    common = dict(**dtype_kwarg(dtype), **{k: v for k, v in family.pipeline_options.items() if k != "feature_extractor"})
    # An opted-in folder of pickled weights: diffusers first looks for .safetensors and logs
    # each miss at error level before it falls back; the user already chose the fallback.
    quiet = source.kind == "folder" and bool(pickled_weight_files(Path(source.location)))
    try:
        with _diffusers_log_level(logging.CRITICAL if quiet else None):
            if source.kind == "single_file":
                pipe = pipeline_class.from_single_file(source.location, **common, **extra)
            else:
                pipe = pipeline_class.from_pretrained(source.location, **common)
    except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError, pickle.UnpicklingError) as exc:
        refused = _pickle_refused("model", source.location, exc)
        if refused is not None:
            raise refused from exc
        if source.kind == "hub":
            raise _hub_error("model", source.location, exc) from exc
        if source.kind == "single_file" and config is not None and _is_hub_error(exc) \
                and not Path(config).expanduser().is_dir():
            raise ModelLoadError(
                f"config={config!r} is not in the local Hugging Face cache"
                f"{' and HF_HUB_OFFLINE=1 forbids downloading it' if hub_offline() else f' ({_first_line(exc)})'}: "
                "download it once with network access, or pass a local diffusers folder of the base model") from exc
        if source.kind == "single_file":
            # diffusers' own words name its loading options; say what a user can change instead.
            read_with = f"config={config!r}" if config else f"{family.base_model}'s configs"
            mismatch = _shape_mismatch(exc)
            if mismatch:
                raise ModelLoadError(
                    f"model={source.location!r} has the {family.label} layout but not the shapes of {read_with} "
                    f"({mismatch}; a pruned or resized model, or a config of another model?): "
                    f"{_config_advice(family, config)}") from exc
            if "valid CLIP model" in str(exc):
                detail = _text_width_mismatch(source.location, family, extra.get("config"))
                raise ModelLoadError(
                    f"model={source.location!r}: its CLIP text encoder does not fit {read_with} "
                    f"({detail or 'diffusers found none of the width those configs give'}): "
                    f"{_config_advice(family, config)}") from exc
            if isinstance(exc, KeyError) and exc.args:
                raise ModelLoadError(
                    f"model={source.location!r} lacks the tensor {exc.args[0]!r} that {read_with} expect: "
                    f"{_config_advice(family, config)}") from exc
            raise ModelLoadError(
                f"model={source.location!r} could not be loaded as an {family.label} checkpoint with {read_with}: "
                f"{_without_internal_advice(_first_line(exc))}: {_config_advice(family, config)}") from exc
        raise ModelLoadError(f"model={source.location!r} could not be loaded as an {family.label} model: "
                             f"{_without_internal_advice(_first_line(exc))}") from exc
    # 3. Keep only the parts we share across pipelines; the safety checker is the caller's choice.
    comps = {name: getattr(pipe, name) for name in family.component_names}
    _check_all_loaded(comps, source.location, config)
    comps = _with_fp16_vae(comps, source, dtype)
    return _with_prediction_type(comps, prediction_type, source.location)


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
