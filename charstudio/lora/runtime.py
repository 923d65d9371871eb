"""LoRAs on a live pipeline: the shape check against the model before anything loads, peft
adapters in and out, their weights, and fusing.

These functions keep no state of their own: which adapters are on, at which weights, is the
caller's to say (a `Studio` keeps that record). peft holds the adapters themselves."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import ConfigError, ModelLoadError, describe
from ..models.family import architecture_of_unet
from ..speed.quantize import check_fusable
from .files import DEFAULT_LORA_DIR, LORA_WEIGHTS_NAME, read_lora_file, resolve_lora_path
from .formats import COMPONENTS, TEXT_COMPONENTS, LoraWeights, architecture_guess, split_lora

log = logging.getLogger(__name__)


def _model_kind(unet: Any) -> str:
    return architecture_of_unet(unet.config)


def _model_name(unet: Any) -> str:
    """The model's architecture as formats.architecture_guess names a LoRA's: a marked family's
    label (SDXL), the architecture of its cross-attention width, else "width N"."""
    kind = _model_kind(unet)
    width = unet.config.cross_attention_dim
    name = kind.removesuffix(f" (cross-attention width {width})")
    return f"width {width}" if name == "this model" else name


def _base_module(module: Any) -> Any:
    # After a first LoRA is loaded, peft wraps the target; its shape lives on base_layer.
    return getattr(module, "base_layer", module)


def _io_dims(module: Any) -> tuple[int, int] | None:
    if hasattr(module, "in_features"):
        return module.in_features, module.out_features
    if hasattr(module, "in_channels"):
        return module.in_channels, module.out_channels
    return None


def _pipe_models(pipe: Any) -> dict[str, Any]:
    """The parts of ``pipe`` a LoRA can adapt: component name -> model (missing ones left out)."""
    return {c: m for c in COMPONENTS if (m := getattr(pipe, c, None)) is not None}


def check_lora_fits(weights: LoraWeights, unet: Any, text_encoder: Any, source: str = "lora", *,
                    text_encoder_2: Any = None) -> None:
    """Raise unless the LoRA fits the model (nothing is loaded).

    A module that exists with another shape means the LoRA is for another model: refused. Modules
    the model lacks are skipped with a warning that counts them (civitai files often carry a few
    extra); a LoRA none of whose modules exist is refused, with the counts.
    """
    models = {"unet": unet, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    _check_tensor_shapes(weights, models, source)
    problems: list[str] = []
    missing: list[str] = []
    matched = total = 0
    if weights.extra_keys:
        problems.append(f"{len(weights.extra_keys)} weights for components this model does not have "
                        f"(e.g. {weights.extra_keys[0]})")
    for comp, sd in weights.states.items():
        model = models[comp]
        if model is None:
            problems.append(f"weights for a {comp} the pipeline does not have")
            continue
        found = _fit_component(comp, model, sd, problems, missing)
        matched, total = matched + found[0], total + found[1]
    if total and not matched and not problems:
        problems.append(f"none of its {total} modules exists in the model (e.g. {missing[0]})")
    if problems:
        guess = architecture_guess(weights)
        if guess is None:
            head = f"it does not fit the model ({_model_kind(unet)})"
        elif guess[0] == _model_name(unet):  # made for this architecture: "looks like X, but the model is X" says nothing
            kind = _model_kind(unet)
            head = f"it does not fit {kind}" if kind.startswith("this model") else f"it does not fit this model, {kind}"
        else:
            head = f"it looks like a LoRA for {guess[1]}, but the model is {_model_kind(unet)}"
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError("lora", source, f"{head}: {'; '.join(problems[:3])}{more}. "
                          "Nothing was loaded; use a LoRA trained for this base model")
    if missing:
        log.warning("%s: %d of its %d modules match the model; %d are not in it and are skipped (e.g. %s)",
                    source, matched, total, len(missing), missing[0])


def _fit_component(comp: str, model: Any, sd: Mapping[str, Any], problems: list[str],
                   missing: list[str]) -> tuple[int, int]:
    """Check one part's LoRA tensors against its layers; returns (modules matched, modules in the file)
    and appends what does not fit to `problems` and the modules the model lacks to `missing`."""
    if comp != "unet" and not hasattr(model, "text_model"):
        sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    modules = dict(model.named_modules())
    matched = total = 0
    for key, tensor in sd.items():
        module_name, _, rest = key.partition(".lora_")
        if rest.startswith("A."):
            total += 1
        module = modules.get(module_name)
        if module is None:
            if rest.startswith("A."):
                missing.append(f"{comp}.{module_name}")
            continue
        dims = _io_dims(_base_module(module))
        if dims is None:
            problems.append(f"{comp}.{module_name} is not a linear or convolution layer")
            continue
        fan_in, fan_out = dims
        if rest.startswith("A.") and tensor.ndim >= 2 and tensor.shape[1] != fan_in:
            problems.append(f"{comp}.{module_name} takes {fan_in} inputs, the LoRA expects {tensor.shape[1]}")
        elif rest.startswith("B.") and tensor.shape[0] != fan_out:
            problems.append(f"{comp}.{module_name} gives {fan_out} outputs, the LoRA expects {tensor.shape[0]}")
        elif rest.startswith("A."):
            matched += 1
    return matched, total


def _check_tensor_shapes(weights: LoraWeights, models: Mapping[str, Any], source: str) -> None:
    """Refuse a file whose tensors disagree with each other: a DoRA magnitude that is not one
    number per output of its layer, a lora_A and lora_B of different ranks. peft would stop at
    "Error(s) in loading state_dict for UNet2DConditionModel:" (the details on later lines), and
    transformers may skip such a tensor with only its load report."""
    for comp, sd in weights.states.items():
        model = models.get(comp)
        if model is None:
            continue
        if comp != "unet" and not hasattr(model, "text_model"):
            sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
        modules = dict(model.named_modules())
        for key, tensor in sd.items():
            module_name, _, rest = key.partition(".lora_")
            if rest.startswith("A.") and tensor.ndim >= 2:
                up = sd.get(f"{module_name}.lora_B.{rest[2:]}")
                if up is not None and up.ndim >= 2 and up.shape[1] != tensor.shape[0]:
                    raise ConfigError("lora", source, f"its tensors {comp}.{key} (rank {tensor.shape[0]}) and "
                                      f"{comp}.{module_name}.lora_B.{rest[2:]} (rank {up.shape[1]}) disagree; "
                                      "the file is inconsistent. Nothing was loaded")
            if rest != "magnitude_vector" or module_name not in modules:
                continue
            weight = getattr(_base_module(modules[module_name]), "weight", None)
            if weight is None:
                continue  # not a layer: check_lora_fits says so
            # peft's DoRA magnitude: one per output, (out,) for a linear layer, (1, out, 1, 1) for a convolution
            out = weight.shape[0]
            want = (out,) if weight.ndim <= 2 else (1, out) + (1,) * (weight.ndim - 2)
            if tuple(tensor.shape) != want:
                raise ConfigError("lora", source, f"its tensor {comp}.{key} has shape {tuple(tensor.shape)}, but "
                                  f"{comp}.{module_name} needs a DoRA magnitude of shape {want}; the file is "
                                  "inconsistent. Nothing was loaded")


def _text_encoder_state(sd: Mapping[str, Any]) -> dict[str, Any]:
    """A text encoder's peft state dict as diffusers' text-encoder loader takes it for any module.

    That loader re-guesses the key layout from marks only q/k/v/out_proj keys leave, so an MLP-only
    LoRA failed ("Could not automatically infer state dict type"); diffusers' own naming
    (``lora_linear_layer.down`` / ``.up``) is read back for every module. DoRA magnitudes get the
    ``.weight`` of their peft parameter: transformers 5's adapter loader does not add it (peft's own
    loader does, and leaves a key that has it as it is), and reported them MISSING."""
    out = {}
    for key, tensor in sd.items():
        key = key.replace(".lora_A.", ".lora_linear_layer.down.").replace(".lora_B.", ".lora_linear_layer.up.")
        out[key + ".weight" if key.endswith(".lora_magnitude_vector") else key] = tensor
    return out


def _put_dora_magnitudes(model: Any, comp: str, sd: Mapping[str, Any], adapter_name: str) -> None:
    """Write the file's DoRA magnitudes into the adapter's layers, whatever the loaders did with them.

    transformers 5 dropped text encoders' magnitudes, leaving peft's starting values (the base
    weight's row norms) with only a load report; so each one is written here, and a layer the
    loaders gave no magnitude is an error, not a plain LoRA."""
    import torch

    if comp != "unet" and not hasattr(model, "text_model"):
        sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    modules = dict(model.named_modules())
    for key, tensor in sd.items():
        if not key.endswith(".lora_magnitude_vector"):
            continue
        name = key.removesuffix(".lora_magnitude_vector")
        if name not in modules:
            continue  # a module the model lacks: skipped, as check_lora_fits warned
        layers = getattr(modules[name], "lora_magnitude_vector", None)
        if layers is None or adapter_name not in layers:
            raise ModelLoadError(f"peft built no DoRA layer for {comp}.{name}, whose magnitude the file holds")
        param = layers[adapter_name].weight
        if tuple(param.shape) != tuple(tensor.shape):
            raise ModelLoadError(f"{comp}.{name}'s DoRA magnitude has shape {tuple(param.shape)} in the model and "
                                 f"{tuple(tensor.shape)} in the file")
        with torch.no_grad():
            param.copy_(tensor.to(device=param.device, dtype=param.dtype))


def loaded_adapters(pipe: Any) -> list[str]:
    """Names of the adapters loaded into ``pipe``'s UNet or text encoder, on or off."""
    names: list[str] = []
    for comp in COMPONENTS:
        model = getattr(pipe, comp, None)
        for n in getattr(model, "peft_config", {}) or {}:
            if n not in names:
                names.append(n)
    return names


def _safe_adapter_name(text: str) -> str:
    # peft uses the adapter name inside module attribute paths, so dots are not allowed.
    cleaned = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in text)
    return cleaned or "lora"


def default_adapter_name(path: str | os.PathLike) -> str:
    """The adapter name a file loads under: its LoRA folder's name for ours, else the file stem."""
    p = Path(path)
    if p.name == LORA_WEIGHTS_NAME:
        # lora/NAME/pytorch_lora_weights.safetensors, or a checkpoint inside lora/NAME/checkpoints/
        stem = p.parent.parent.parent.name if p.parent.parent.name == "checkpoints" else p.parent.name
    else:
        stem = p.stem
    return _safe_adapter_name(stem)


def remove_adapter(unet: Any, text_encoder: Any, adapter_name: str, text_encoder_2: Any = None) -> None:
    """Take adapter ``adapter_name`` out of a UNet and its text encoders (any may lack it)."""
    from ..compat import remove_text_encoder_adapter

    if unet is not None and adapter_name in (getattr(unet, "peft_config", None) or {}):
        unet.delete_adapters([adapter_name])
    for encoder in (text_encoder, text_encoder_2):
        if encoder is not None:
            remove_text_encoder_adapter(encoder, adapter_name)


def _remove_adapter(pipe: Any, adapter_name: str) -> None:
    remove_adapter(getattr(pipe, "unet", None), getattr(pipe, "text_encoder", None), adapter_name,
                   getattr(pipe, "text_encoder_2", None))


def load_lora(pipe: Any, path_or_name: str | os.PathLike, *, weight: float = 1.0, adapter_name: str | None = None,
              lora_dir: str | os.PathLike = DEFAULT_LORA_DIR, active: Mapping[str, float] | None = None) -> str:
    """Load a LoRA (ours, kohya/A1111, civitai) into ``pipe`` as adapter ``adapter_name``; return the name.

    Afterwards the new adapter is on at ``weight`` together with ``active`` (name -> weight of
    adapters already loaded; none by default). Everything is checked before loading, and a
    failure while loading removes the half-loaded adapter.
    """
    import math

    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin

    if not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ConfigError("weight", weight, "use a finite number (1.0 = full strength, 0 = off)")
    # 1. Find and read the file; work out its format.
    path = resolve_lora_path(path_or_name, lora_dir)
    raw, meta = read_lora_file(path)
    models = _pipe_models(pipe)
    unet = pipe.unet
    weights = split_lora(raw, meta, unet_config=unet.config, source=str(path))
    # 2. Check modules and shapes before the model is touched.
    check_lora_fits(weights, unet, models.get("text_encoder"), source=str(path),
                    text_encoder_2=models.get("text_encoder_2"))
    if adapter_name is None:
        adapter_name = default_adapter_name(path)
    if adapter_name in loaded_adapters(pipe):
        raise ConfigError("adapter_name", adapter_name, "an adapter of that name is already loaded; "
                          "unload it first or pass another adapter_name")
    if any(ch in adapter_name for ch in ". "):
        raise ConfigError("adapter_name", adapter_name, "use letters, digits, '_' and '-' only")
    # 3. Load each component through diffusers' loaders; our files carry exact peft configs.
    try:
        for comp, sd in weights.states.items():
            alphas = None
            if comp not in weights.configs and weights.network_alphas:
                alphas = {k: v for k, v in weights.network_alphas.items() if k.startswith(comp + ".")}
            prefixed = {f"{comp}.{k}": v for k, v in sd.items()}
            metadata = _prefixed(weights.configs.get(comp), comp)
            if comp == "unet":
                StableDiffusionLoraLoaderMixin.load_lora_into_unet(
                    prefixed, network_alphas=alphas or None, unet=unet, adapter_name=adapter_name, metadata=metadata)
            else:
                prefixed = {f"{comp}.{k}": v for k, v in _text_encoder_state(sd).items()}
                StableDiffusionLoraLoaderMixin.load_lora_into_text_encoder(
                    prefixed, network_alphas=alphas or None, text_encoder=models[comp], prefix=comp,
                    adapter_name=adapter_name, metadata=metadata)
            _put_dora_magnitudes(models[comp], comp, sd, adapter_name)
    except Exception as exc:
        _remove_adapter(pipe, adapter_name)
        log.debug("loading %s failed", path, exc_info=True)
        raise ModelLoadError(f"lora={str(path)!r} could not be loaded ({describe(exc, 200)}); "
                             "the model was left unchanged") from exc
    # 4. The given adapters stay on, and this one joins them at its weight.
    set_loras(pipe, {**(active or {}), adapter_name: float(weight)})
    log.info("loaded LoRA %s (%s format, rank %s) as %r at weight %s", path, weights.format, weights.rank,
             adapter_name, weight)
    return adapter_name


def _prefixed(config: Mapping[str, Any] | None, prefix: str) -> dict | None:
    return {f"{prefix}.{k}": v for k, v in config.items()} if config else None


def set_loras(pipe: Any, weights: Mapping[str, float]) -> None:
    """Use exactly the adapters in ``weights`` (name -> weight); others stay loaded but off.

    An adapter at weight 0 is off as well: peft's DoRA layers apply their magnitudes whatever the
    scale, so a DoRA "at weight 0" would still change the model (a LoRA sweep's 0 must be the base
    model's picture). The caller's record (a Studio's, a recipe's) keeps the 0.

    Refused while adapters are fused: their weights are baked into the base weights then.
    """
    import math

    known = loaded_adapters(pipe)
    for name, w in weights.items():
        if name not in known:
            raise ConfigError("loras", name, f"no adapter of that name is loaded (loaded: {known or 'none'})")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ConfigError(f"loras[{name!r}]", w, "use a finite number (1.0 = full strength, 0 = off)")
    names = [n for n in weights if float(weights[n]) != 0.0]
    values = [float(weights[n]) for n in names]
    if fused_loras(pipe):
        raise ConfigError("loras", dict(weights), "the active adapters are fused into the model; "
                          "call unfuse_loras() before changing them")
    _set_adapters(pipe, names, values)


def _set_adapters(pipe: Any, names: list[str], values: list[float]) -> None:
    """Activate ``names`` at ``values`` in each component; a component none of them touches is switched off."""
    from diffusers.loaders.lora_base import (
        disable_lora_for_text_encoder,
        enable_lora_for_text_encoder,
        set_adapters_for_text_encoder,
    )

    unet = pipe.unet
    if getattr(unet, "peft_config", None):
        unet_names = [n for n in names if n in unet.peft_config]
        if unet_names:
            unet.enable_lora()
            unet.set_adapters(unet_names, [values[names.index(n)] for n in unet_names])
        else:
            unet.disable_lora()
    for comp in TEXT_COMPONENTS:
        te = getattr(pipe, comp, None)
        if te is None or not getattr(te, "peft_config", None):
            continue
        te_names = [n for n in names if n in te.peft_config]
        if te_names:
            enable_lora_for_text_encoder(te)
            set_adapters_for_text_encoder(te_names, te, [values[names.index(n)] for n in te_names])
        else:
            disable_lora_for_text_encoder(te)


def unload_loras(pipe: Any, names: Iterable[str] | None = None, *, active: Mapping[str, float] | None = None) -> None:
    """Remove adapters (all when ``names`` is None), restoring the base model's layers.

    ``active`` (name -> weight) are the adapters to keep on afterwards; the removed ones are
    dropped from it.
    """
    from ..compat import remove_all_text_encoder_adapters
    from ..models.speed import refresh_fused_qkv

    if fused_loras(pipe):
        unfuse_loras(pipe)
    if names is None:
        if getattr(pipe.unet, "peft_config", None):
            pipe.unet.unload_lora()
        for comp in TEXT_COMPONENTS:
            te = getattr(pipe, comp, None)
            if te is not None:
                remove_all_text_encoder_adapters(te)
        # The fast path's fused q/k/v copies (speed="max"), when there are any, follow the base
        # weights as the adapters left them (peft's unmerge is a rounding away from before).
        refresh_fused_qkv(pipe.unet)
        return
    names = list(names)
    known = loaded_adapters(pipe)
    for n in names:
        if n not in known:
            raise ConfigError("loras", n, f"no adapter of that name is loaded (loaded: {known or 'none'})")
    remaining = {k: v for k, v in (active or {}).items() if k not in names}
    for n in names:
        _remove_adapter(pipe, n)
    set_loras(pipe, remaining)
    refresh_fused_qkv(pipe.unet)


def _tuner_layers(pipe: Any) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = []
    for comp in COMPONENTS:
        model = getattr(pipe, comp, None)
        if model is not None:
            layers += [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    return layers


def fused_loras(pipe: Any) -> list[str]:
    """Adapters currently merged into the base weights."""
    names: set[str] = set()
    for layer in _tuner_layers(pipe):
        names.update(layer.merged_adapters)
    return sorted(names)


def fuse_loras(pipe: Any, active: Mapping[str, float]) -> list[str]:
    """Merge the active adapters (as set with `set_loras`), at their weights, into the base weights.

    Sampling is then faster; ``unfuse_loras`` (or ``unload_loras``) reverses it.
    """
    if not active:
        raise ConfigError("loras", {}, "no adapter is active; load one with load_lora first")
    names = [n for n, w in active.items() if float(w) != 0.0]  # off at weight 0, as set_loras leaves them
    check_fusable(_tuner_layers(pipe))  # int8 weights (charstudio.speed.quantize) cannot take a merge
    # The weights set by set_loras already live in each layer's scaling, so merging uses them.
    for layer in _tuner_layers(pipe):
        present = [n for n in names if n in getattr(layer, "lora_A", {})]
        if present:
            layer.merge(adapter_names=present)
    log.info("fused LoRA adapters %s", names)
    return names


def unfuse_loras(pipe: Any) -> None:
    """Take fused adapters back out of the base weights."""
    for layer in _tuner_layers(pipe):
        if layer.merged:
            layer.unmerge()
