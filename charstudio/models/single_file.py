"""Single-file checkpoints (A1111 / civitai ``.safetensors``, pickled ``.ckpt`` with the opt-in):
their family from their keys, the configs they are read with, and diffusers' failures turned
into one line that says what a user can change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from ..weights import read_keys, read_shapes
from .family import DEFAULT_FAMILY, FAMILIES, ModelFamily, family_of_folder, family_of_keys
from .hub import first_line, hub_offline, is_hub_error, without_internal_advice


def checkpoint_keys(path: str) -> list[str]:
    """The tensor names in a single-file checkpoint, read without loading its weights.

    `.safetensors`: only the header is read. Pickled files are opened as diffusers opens them,
    with `weights_only=True` (memory-mapped, so tensors are not read), after the caller opted in.
    """
    return read_keys(path, "model", allow_pickle=True, what=f"{Path(path).suffix.lower()} checkpoint",
                     advice=f"re-download {Path(path).name} or use another checkpoint")


def check_single_file_layout(path: str, keys: list[str]) -> ModelFamily:
    """The family of a single-file checkpoint in the LDM/SGM layout (SD 1.x or SDXL), or a
    one-line ModelLoadError naming the keys that decided it."""
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise ModelLoadError(f"model={path!r} is an SD 2.x checkpoint (OpenCLIP text encoder), and charstudio runs "
                             "SD 1.x and SDXL models: use an SD 1.5 or SDXL .safetensors, a diffusers folder or a preset")
    family = family_of_keys(keys, "model", path) or DEFAULT_FAMILY
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


def _shape_mismatch(exc: BaseException) -> str | None:
    """'<tensor>: expected [...], got [...]' when diffusers refused a weight of the wrong shape."""
    import re

    m = re.search(r"(\S+) expected shape torch\.Size\((\[[^]]*\])\), but got torch\.Size\((\[[^]]*\])\)", str(exc))
    return f"{m[1]}: expected {m[2]}, got {m[3]}" if m else None


def _text_width_mismatch(path: str, family: ModelFamily, config_dir: str | None) -> str | None:
    """'<tensor> is N wide and <encoder> in the config has hidden_size M' for the first text
    encoder the file and the config folder disagree on; None when it cannot tell (a hub config,
    a pickled file)."""
    import json

    from ..weights import WeightFileError

    if config_dir is None or not Path(config_dir).is_dir() or not path.lower().endswith(".safetensors"):
        return None
    try:
        shapes = read_shapes(path, "model")
    except WeightFileError:  # a header that cannot be read was reported before loading began
        return None
    for encoder, key in family.single_file_text_width_keys.items():
        try:
            config = json.loads((Path(config_dir) / encoder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        hidden = config.get("hidden_size") if isinstance(config, dict) else None
        width = shapes[key][-1] if shapes.get(key) else None
        if hidden is not None and width is not None and width != hidden:
            return f"{key} is {width} wide and the configs' {encoder} has hidden_size {hidden}"
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


def _check_config(config: str) -> str:
    """A `config=` for a single file: a diffusers folder (returned as a path) or a hub id."""
    path = Path(config).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise ModelLoadError(f"config={config!r} is a folder without model_index.json: give the base model's "
                                 "diffusers-format folder (save_pretrained) or its hub id")
        return str(path)
    if path.exists() or config.startswith((".", "/", "~")) or config.count("/") != 1 or not all(config.split("/")):
        examples = " or ".join(repr(f.base_model) for f in FAMILIES.values())
        raise ModelLoadError(f"config={config!r} is not a diffusers folder or a hub id like 'org/name': give the base "
                             f"model's diffusers folder or hub id (e.g. {examples})")
    return config


def single_file_setup(location: str, config: str | None) -> tuple[ModelFamily, dict[str, Any], list[str]]:
    """A single file's family, the extra `from_single_file` arguments it is read with, and its keys.

    It must be an SD 1.x or SDXL checkpoint in the LDM/SGM layout; diffusers would otherwise guess
    "SD 1.x" for any keys and fail somewhere deep, or quietly take parts from `config`. Without
    `config`, the base model's configs shipped in the package and the real CLIP tokenizers: no hub."""
    keys = checkpoint_keys(location)
    family = check_single_file_layout(location, keys)
    if config is not None:
        extra: dict[str, Any] = {"config": _check_config(config)}
        _check_config_family(extra["config"], family, location)
    else:
        extra = {"config": str(family.config_folder()), **family.real_tokenizers()}
    return family, extra, keys


def single_file_error(exc: BaseException, location: str, family: ModelFamily, config: str | None,
                      extra: dict[str, Any]) -> ModelLoadError:
    """diffusers' failure to read a single file, in words that name what a user can change
    (diffusers' own words name its loading options)."""
    if config is not None and is_hub_error(exc) and not Path(config).expanduser().is_dir():
        return ModelLoadError(
            f"config={config!r} is not in the local Hugging Face cache"
            f"{' and HF_HUB_OFFLINE=1 forbids downloading it' if hub_offline() else f' ({first_line(exc)})'}: "
            "download it once with network access, or pass a local diffusers folder of the base model")
    read_with = f"config={config!r}" if config else f"{family.base_model}'s configs"
    mismatch = _shape_mismatch(exc)
    if mismatch:
        return ModelLoadError(
            f"model={location!r} has the {family.label} layout but not the shapes of {read_with} "
            f"({mismatch}; a pruned or resized model, or a config of another model?): "
            f"{_config_advice(family, config)}")
    if "valid CLIP model" in str(exc):
        detail = _text_width_mismatch(location, family, extra.get("config"))
        return ModelLoadError(
            f"model={location!r}: its CLIP text encoder does not fit {read_with} "
            f"({detail or 'diffusers found none of the width those configs give'}): "
            f"{_config_advice(family, config)}")
    if isinstance(exc, KeyError) and exc.args:
        return ModelLoadError(
            f"model={location!r} lacks the tensor {exc.args[0]!r} that {read_with} expect: "
            f"{_config_advice(family, config)}")
    return ModelLoadError(
        f"model={location!r} could not be loaded as an {family.label} checkpoint with {read_with}: "
        f"{without_internal_advice(first_line(exc))}: {_config_advice(family, config)}")
