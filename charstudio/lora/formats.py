"""The LoRA file formats: telling diffusers, legacy diffusers and kohya apart, converting
between them and writing them (the peft configs ride in the safetensors header)."""

from __future__ import annotations

import collections
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

from ..errors import ConfigError, describe
from ..io_utils import atomic_write
from ..models.family import FAMILIES
from .files import DEFAULT_LORA_DIR, LORA_WEIGHTS_NAME, read_lora_file, resolve_lora_path

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' header key for the peft configs
UNET_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")

LoraFormat = Literal["diffusers", "diffusers_legacy", "kohya"]
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")  # SD 1.x has the first; SDXL both
COMPONENTS = ("unet", *TEXT_COMPONENTS)
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
# The families' kohya key layouts (ModelFamily.kohya_prefixes / kohya_sgm_unet): SD 1.x names its one
# text encoder lora_te_, SDXL lora_te1_/lora_te2_ with SGM UNet blocks, as kohya sd-scripts writes and
# A1111's and ComfyUI's key maps look for.
_KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha", ".dora_scale")


def detect_format(state_dict: Mapping[str, Any], source: str = "state dict") -> LoraFormat:
    """Name the LoRA key convention of ``state_dict``, or raise saying which formats would work."""
    keys = list(state_dict)
    for mark, name in ((".hada_", "LoHa"), (".lokr_", "LoKr"), (".oft_", "OFT"), (".glora_", "GLoRA")):
        if any(mark in k for k in keys):
            raise ConfigError("lora", source, f"this is a LyCORIS {name} file ({next(k for k in keys if mark in k)}), "
                              "which diffusers and peft cannot load as a LoRA adapter; use a plain LoRA "
                              "(kohya lora_down/lora_up or diffusers lora_A/lora_B)")
    if all(k.startswith(_KOHYA_PREFIXES) and k.endswith(_KOHYA_SUFFIXES) for k in keys):
        return "kohya"
    if all(".lora_A." in k or ".lora_B." in k or k.endswith(".lora_magnitude_vector") for k in keys):
        return "diffusers"
    legacy_marks = (".lora.down.", ".lora.up.", "_lora.down.", "_lora.up.", ".lora_linear_layer.")
    if all(any(m in k for m in legacy_marks) or k.endswith(".alpha") for k in keys):
        return "diffusers_legacy"
    sample = ", ".join(keys[:3])
    raise ConfigError("lora", source, f"its keys fit no known LoRA format (first keys: {sample}); expected "
                      "kohya/A1111 keys (lora_unet_*.lora_down.weight) or diffusers/peft keys "
                      "(unet.*.lora_A.weight)")


@dataclass
class LoraWeights:
    """A LoRA split into per-component peft state dicts (keys like ``down_blocks...to_q.lora_A.weight``).

    ``configs`` holds each component's peft ``LoraConfig`` arguments when the file recorded them
    (our format); otherwise ``network_alphas`` holds kohya's per-module alphas, in diffusers' naming.
    """

    unet: dict[str, Any]
    text_encoder: dict[str, Any]
    format: LoraFormat
    configs: dict[str, dict] = field(default_factory=dict)
    network_alphas: dict[str, float] | None = None
    extra_keys: list[str] = field(default_factory=list)  # keys for components the model family does not have
    file_metadata: dict[str, str] = field(default_factory=dict)
    text_encoder_2: dict[str, Any] = field(default_factory=dict)  # SDXL's second text encoder
    family: str = "sd1"  # the family whose key layout it was read in (charstudio.models.family.FAMILIES)

    @property
    def states(self) -> dict[str, dict[str, Any]]:
        """The components this LoRA has weights for: name -> peft state dict."""
        return {c: sd for c in COMPONENTS if (sd := getattr(self, c))}

    @property
    def rank(self) -> int | None:
        ranks = [v.shape[0] for sd in self.states.values() for k, v in sd.items() if ".lora_A." in k]
        return collections.Counter(ranks).most_common(1)[0][0] if ranks else None


def _kohya_module_name(component: str, module: str, family: Any = None, layers_per_block: int = 2) -> str:
    """kohya's name of a peft module in `family`'s layout (default SD 1.x): SDXL's UNet modules in
    the SGM block naming kohya, A1111 and ComfyUI use (``input_blocks_4_1_...``), text encoders in
    Hugging Face naming."""
    from ..models.family import SD1

    family = family or SD1
    if component == "unet" and family.kohya_sgm_unet:
        module = _sgm_unet_module(module, layers_per_block)
    prefixes = {"text_encoder_2": "lora_te2_", **family.kohya_prefixes}
    return prefixes[component] + module.replace(".", "_")


def _kohya_names(component: str, module: str, family: Any, layers_per_block: int = 2) -> set[str]:
    """The names a kohya file may give a module: the family's own layout, or diffusers-style UNet
    block names with the family's prefixes (civitai files come in both)."""
    import dataclasses

    flat = dataclasses.replace(family, kohya_sgm_unet=False)
    return {_kohya_module_name(component, module, f, layers_per_block) for f in (family, flat)}


def _sgm_unet_module(module: str, layers_per_block: int) -> str:
    """A diffusers UNet attention module's name in SGM (original SDXL) block numbering; other
    modules keep their diffusers name, which A1111 and ComfyUI map as well."""
    import re

    step = layers_per_block + 1  # each level: its resnets (with attentions), then a down/upsampler
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", module):
        return f"input_blocks.{1 + int(m[1]) * step + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", module):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", module):
        return f"output_blocks.{int(m[1]) * step + int(m[2])}.1.{m[3]}"
    return module


def _frozen_config(config: dict) -> Any:
    """A config dict readable as attributes too, as diffusers' converters read a model's config."""
    from diffusers.configuration_utils import FrozenDict

    return FrozenDict(config)


def lora_family(state_dict: Mapping[str, Any], unet_config: Any = None) -> Any:
    """The family whose key layout a LoRA is read in: the model's (from its UNet, as
    `detect_family` tells), or with no model at hand, SDXL when the file has SDXL's second text
    encoder or SGM block names, else SD 1.x."""
    from ..models.family import SD1, SDXL

    if unet_config is not None:
        kind = (unet_config.get("addition_embed_type") if hasattr(unet_config, "get")
                else getattr(unet_config, "addition_embed_type", None))
        return SDXL if kind == "text_time" else SD1
    marks = ("lora_te1_", "lora_te2_", "text_encoder_2.", "lora_unet_input_blocks_", "lora_unet_output_blocks_",
             "lora_unet_middle_block_")
    return SDXL if any(k.startswith(marks) for k in state_dict) else SD1


def split_lora(state_dict: Mapping[str, Any], file_metadata: Mapping[str, str] | None = None,
               *, unet_config: Any = None, source: str = "state dict") -> LoraWeights:
    """Convert a LoRA state dict in any supported format into per-component peft state dicts.

    The key conversion is diffusers' own (the one ``load_lora_weights`` applies), so what is
    checked here is exactly what would be loaded.
    """
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    fmt = detect_format(state_dict, source)
    # Every tensor of the file, whatever it is for (DoRA scales, alphas, magnitudes, keys for parts
    # the model lacks): one NaN turns every picture black.
    _check_finite_tensors(state_dict, source)
    file_metadata = dict(file_metadata or {})
    raw = dict(state_dict)
    # 1. diffusers' kohya reader drops DoRA scales with only a warning: take them out here and
    #    give them back to their modules as peft's magnitude vectors (below).
    dora = {k[:-len(".dora_scale")]: raw.pop(k) for k in list(raw) if k.endswith(".dora_scale")}
    if any("lora_magnitude_vector" in k for k in raw) and fmt != "diffusers":
        raise ConfigError("lora", source, "its DoRA magnitudes are in a layout charstudio does not read; "
                          "use a kohya (dora_scale) or diffusers/peft (lora_magnitude_vector) file")
    family = lora_family(raw, unet_config)
    if family.kohya_sgm_unet and unet_config is None:  # SGM block names map through the base UNet's layout
        from diffusers import UNet2DConditionModel

        unet_config = _frozen_config(UNet2DConditionModel.load_config(family.config_folder() / "unet"))
    # Keys for a text encoder the family does not have (SD 1.x: a second one) are named, not loaded.
    has = {enc for _, enc in family.text_parts}
    extra = [k for k in raw if "text_encoder_2" not in has and k.startswith(("lora_te2_", "text_encoder_2."))]
    # 2. Let the family's diffusers loader rename kohya / legacy keys (SDXL's maps SGM block names too).
    import diffusers.loaders.lora_pipeline as lora_pipeline

    mixin = getattr(lora_pipeline, family.lora_loader)
    try:
        converted, network_alphas = mixin.lora_state_dict(
            {k: v for k, v in raw.items() if k not in extra}, unet_config=unet_config)
    except (ValueError, KeyError, IndexError) as exc:
        raise ConfigError("lora", source, f"its keys could not be mapped to an {family.label} "
                          f"model ({describe(exc, 160)})") from exc

    states = {c: {k[len(c) + 1:]: v for k, v in converted.items() if k.startswith(c + ".")} for c in COMPONENTS}
    extra += [k for k in converted if not k.startswith(tuple(c + "." for c in COMPONENTS))]
    unet_sd = states["unet"]
    # 3. Same normalisation as diffusers' load_lora_into_unet / _load_lora_into_text_encoder.
    if unet_sd and "lora_A" not in next(iter(unet_sd)):
        unet_sd = convert_unet_state_dict_to_peft(unet_sd)
    texts = {c: _text_state_to_peft(states[c]) for c in TEXT_COMPONENTS}
    layers_per_block = _layers_per_block(unet_config or {})
    if dora:
        _add_dora_magnitudes(dora, {"unet": unet_sd, **texts}, family, layers_per_block, source)
    configs: dict[str, dict] = {}
    if fmt == "kohya":
        # 4. Exact peft configs from the file itself: diffusers names kohya's alphas after its own
        #    intermediate keys (``...processor.to_q_lora.down.weight.alpha``), which its config builder
        #    then fails to match to modules, so per-module alphas (LoCon's conv_alpha, per-block
        #    alphas) were lost; and its text-encoder config would not ask for DoRA either.
        for comp, sd in (("unet", unet_sd), *texts.items()):
            if sd:
                configs[comp] = _kohya_config(comp, sd, raw, family, layers_per_block)
        network_alphas = None
    raw_meta = file_metadata.get(ADAPTER_METADATA_KEY)
    if raw_meta:
        try:
            flat = json.loads(raw_meta)
        except json.JSONDecodeError as exc:
            raise ConfigError("lora", source, f"its {ADAPTER_METADATA_KEY} header is not valid JSON") from exc
        if not isinstance(flat, dict):
            raise ConfigError("lora", source, f"its {ADAPTER_METADATA_KEY} header is not a JSON object")
        for comp, sd in (("unet", unet_sd), *texts.items()):
            # "text_encoder." would also match "text_encoder_2.": the dot after the name tells them apart
            sub = {k[len(comp) + 1:]: v for k, v in flat.items() if k.startswith(comp + ".")}
            if sub:
                configs[comp] = _checked_header(comp, sub, sd, source)
    return LoraWeights(unet=unet_sd, text_encoder=texts["text_encoder"], text_encoder_2=texts["text_encoder_2"],
                       format=fmt, configs=configs, network_alphas=network_alphas or None, extra_keys=extra,
                       file_metadata=file_metadata, family=family.name)


def _text_state_to_peft(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A text encoder's LoRA keys in peft naming, from whichever naming diffusers' converters left
    (old ``to_q_lora.down``, new ``lora_linear_layer.down``, ``text_projection.lora.down``, peft).

    The layout is given, not guessed: diffusers guesses it from marks only some modules leave
    (``to_out_lora``, ``lora_linear_layer``), so a LoRA without ``out_proj`` (q/k/v only, or the
    MLP only as peft keys) failed with "Could not automatically infer state dict type"."""
    from diffusers.utils import convert_state_dict_to_peft
    from diffusers.utils.state_dict_utils import StateDictType

    if not state_dict:
        return {}
    old = convert_state_dict_to_peft(dict(state_dict), original_type=StateDictType.DIFFUSERS_OLD)
    return convert_state_dict_to_peft(old, original_type=StateDictType.DIFFUSERS)


def _kohya_config(comp: str, sd: Mapping[str, Any], raw: Mapping[str, Any], family: Any,
                  layers_per_block: int = 2) -> dict:
    """A component's peft ``LoraConfig`` arguments rebuilt from a kohya file: each module's rank
    from its shapes, its alpha from its own ``.alpha`` (none: alpha = rank, kohya's rule), DoRA
    when the file has magnitudes. Target and pattern names leave out ``text_model.``: peft matches
    them as suffixes, so they fit text encoders with and without that level."""
    ranks = {k.partition(".lora_")[0]: int(v.shape[1]) for k, v in sd.items() if ".lora_B." in k}
    alphas = {}
    for module, r in ranks.items():
        kohya_module = module if comp == "unet" or module.startswith("text_model.") else "text_model." + module
        # the file's own name for it: kohya's SDXL (SGM) or diffusers-style naming
        names = _kohya_names(comp, kohya_module, family, layers_per_block)
        a = next((raw[n + ".alpha"] for n in names if n + ".alpha" in raw), None)
        alphas[module] = float(a.item()) if a is not None else float(r)
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
    short = {m: m.removeprefix("text_model.") for m in ranks}
    return {
        "r": r, "lora_alpha": alpha,
        "target_modules": sorted(short.values()),
        "rank_pattern": {short[m]: v for m, v in ranks.items() if v != r},
        "alpha_pattern": {short[m]: v for m, v in alphas.items() if v != alpha},
        "use_dora": any(k.endswith(".lora_magnitude_vector") for k in sd),
    }


def _add_dora_magnitudes(dora: dict[str, Any], states: Mapping[str, dict[str, Any]], family: Any,
                         layers_per_block: int, source: str) -> None:
    """Put kohya's ``dora_scale`` tensors into the peft state dicts as ``lora_magnitude_vector``.

    peft's DoRA scales each *output* row of W + BA to its magnitude, which is kohya/LyCORIS's
    decomposition along the output axis (``wd_on_out``, LyCORIS's default: ``dora_scale`` of shape
    (out, 1, ...)). The input-axis form (shape (1, in, ...)) has no peft equivalent: refused,
    naming the module.
    """
    for comp, sd in states.items():
        for key in [k for k in sd if ".lora_B." in k]:
            module = key.partition(".lora_B.")[0]
            kohya_module = module if comp == "unet" or module.startswith("text_model.") else "text_model." + module
            names = _kohya_names(comp, kohya_module, family, layers_per_block)
            name = next((n for n in names if n in dora), None)
            if name is None:
                continue
            scale, out = dora.pop(name), sd[key].shape[0]
            if scale.shape[0] != out or scale.numel() != out:
                raise ConfigError("lora", source, f"its DoRA scale for {name} has shape {tuple(scale.shape)}: "
                                  "decomposed along the input axis, which peft's DoRA cannot represent; use a "
                                  "DoRA trained with the output-axis decomposition (shape (out, 1)) or a plain LoRA")
            up = sd[key]
            # peft's magnitude: (out,) for a linear layer, (1, out, 1, 1) for a convolution
            shape = (out,) if up.ndim <= 2 else (1, out) + (1,) * (up.ndim - 2)
            sd[f"{module}.lora_magnitude_vector"] = scale.reshape(shape).float()
    if dora:
        raise ConfigError("lora", source, f"its DoRA scale {next(iter(dora))}.dora_scale belongs to no LoRA module "
                          "in the file; the file is inconsistent")


def _check_finite_tensors(tensors: Mapping[str, Any], source: str) -> None:
    """Refuse NaN or inf in any weight: one such value turns every picture black."""
    import torch

    for key, tensor in tensors.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ConfigError("lora", source, f"its tensor {key} holds NaN or infinite values; the file is damaged")


def _non_finite(value: Any, path: str) -> str | None:
    """The path of the first NaN or inf number inside a JSON value, else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        return next((p for k, v in value.items() if (p := _non_finite(v, f"{path}.{k}"))), None)
    if isinstance(value, list):
        return next((p for i, v in enumerate(value) if (p := _non_finite(v, f"{path}[{i}]"))), None)
    return None


def _checked_header(comp: str, header: dict, sd: Mapping[str, Any], source: str) -> dict:
    """A component's peft config from the file header, checked against its tensors (the truth).

    The header drives what peft allocates and how it computes, so a header that disagrees with
    the tensors is refused before anything is built: a rank other than the tensors' (an
    ``r=100000`` header would allocate for that rank), DoRA without DoRA tensors, NaN or inf
    anywhere, modules the tensors train that the header does not target.
    """
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils.other import get_pattern_key

    where = f"its {ADAPTER_METADATA_KEY} header"
    bad = _non_finite(header, comp)
    if bad is not None:
        raise ConfigError("lora", source, f"{where} holds a NaN or infinite number at {bad}; use finite numbers")
    if header.get("use_dora") and not any("lora_magnitude_vector" in k for k in sd):
        raise ConfigError("lora", source, f"{where} says {comp}.use_dora=true, but the file holds no DoRA "
                          "magnitude tensors; the file is inconsistent")
    if not header.get("use_dora") and (mag := next((k for k in sd if k.endswith("lora_magnitude_vector")), None)):
        # peft would build plain LoRA layers and drop the magnitudes without a word
        raise ConfigError("lora", source, f"{where} does not say {comp}.use_dora=true, but the file holds DoRA "
                          f"magnitudes ({comp}.{mag}); the file is inconsistent")
    for key in ("r", "lora_alpha"):
        value = header.get(key)
        if key in header and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigError("lora", source, f"{where} says {comp}.{key}={value!r}; expected a number >= 0")
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = header.get(key)
        if pattern is not None and not (isinstance(pattern, dict) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in pattern.values())):
            raise ConfigError("lora", source, f"{where} says {comp}.{key}={pattern!r}; expected names -> numbers")
    try:
        config = LoraConfig(**header)
    except (TypeError, ValueError) as exc:
        log.debug("peft refused the %s header of %s: %s", comp, source, exc)
        raise ConfigError("lora", source, f"{where} for {comp} is not a peft LoraConfig "
                          f"({describe(exc, 160)})") from exc
    for key, tensor in sd.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0]
        pattern = get_pattern_key(list(config.rank_pattern or {}), module)
        rank = (config.rank_pattern or {}).get(pattern, config.r)
        if int(tensor.shape[0]) != rank:
            log.debug("%s: header rank %s for %s.%s, tensor shape %s", source, rank, comp, module, tuple(tensor.shape))
            raise ConfigError("lora", source, f"{where} says rank {rank} for {comp}.{module}, but its tensors "
                              f"have rank {int(tensor.shape[0])}; the file is inconsistent")
        if not check_target_module_exists(config, module):
            raise ConfigError("lora", source, f"{where} does not target {comp}.{module}, which its tensors train; "
                              "the file is inconsistent")
    return header


def peft_to_kohya(states: Mapping[str, Mapping[str, Any]], alphas: Mapping[str, float], *, family: Any = None,
                  layers_per_block: int = 2) -> dict[str, "torch.Tensor"]:
    """kohya/A1111 keys from peft state dicts (component -> state dict); ``alphas`` maps
    ``component.module`` to its alpha. Keys follow `family`'s layout (default SD 1.x; SDXL:
    ``lora_te1_`` / ``lora_te2_`` and the UNet's SGM block numbers, see lora/README.md).

    Text-encoder modules get the ``text_model.`` prefix that A1111 and ComfyUI expect, even when
    the installed transformers no longer has that level.
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    for comp, sd in states.items():
        for key, tensor in sd.items():
            if ".lora_A." not in key and ".lora_B." not in key and not key.endswith(".lora_magnitude_vector"):
                raise ConfigError("lora", key, "only lora_A/lora_B weights and DoRA magnitudes can be written "
                                  "in kohya format")
            module, _, rest = key.partition(".lora_")
            alpha_key = f"{comp}.{module}"
            if comp != "unet" and not module.startswith("text_model."):
                module = "text_model." + module
            base = _kohya_module_name(comp, module, family, layers_per_block)
            if rest.startswith("A."):
                out[base + ".lora_down.weight"] = tensor.contiguous()
                out[base + ".alpha"] = torch.tensor(float(alphas[alpha_key]), dtype=torch.float32)
            elif rest == "magnitude_vector":  # kohya/LyCORIS DoRA, decomposed along the output axis
                # LyCORIS's shape: (out, 1) for a linear layer, (out, 1, 1, 1) for a convolution
                # (peft's (1, out, 1, 1)), as ComfyUI's weight_decompose broadcasts it
                scale = tensor.reshape(-1, 1) if tensor.ndim <= 1 else tensor.transpose(0, 1)
                out[base + ".dora_scale"] = scale.contiguous()
            else:
                out[base + ".lora_up.weight"] = tensor.contiguous()
    return out


def _module_alpha(config: Mapping[str, Any], module: str) -> float:
    """The alpha peft uses for ``module``: a matching ``alpha_pattern`` entry, else ``lora_alpha``."""
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        bare = pattern.lstrip("^")
        if module == bare or module.endswith("." + bare):
            return float(value)
    return float(config["lora_alpha"])


def _json_config(config: Any) -> dict:
    """A peft config as plain JSON types (sets become sorted lists, enums their value)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(d, default=lambda o: sorted(o) if isinstance(o, set) else str(getattr(o, "value", o))))


def adapter_states(models: Mapping[str, Any], adapter_name: str = "default"
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, dict]]:
    """The trained adapter ``adapter_name`` of each model (component name -> UNet or text
    encoder; None skipped) as peft state dicts, and each component's peft config."""
    from peft.utils import get_peft_model_state_dict

    states: dict[str, dict[str, Any]] = {}
    configs: dict[str, dict] = {}
    for comp, model in models.items():
        if model is None or adapter_name not in (getattr(model, "peft_config", None) or {}):
            continue
        sd = {k: v.detach().float().cpu().contiguous()
              for k, v in get_peft_model_state_dict(model, adapter_name=adapter_name).items()}
        if comp != "unet" and not hasattr(model, "text_model"):
            # Older transformers (and every other tool) name these text_model.encoder...; the
            # diffusers loader strips the prefix again when the model lacks that level.
            sd = {("text_model." + k if not k.startswith("text_model.") else k): v for k, v in sd.items()}
        states[comp] = sd
        configs[comp] = _json_config(model.peft_config[adapter_name])
    if not states:
        raise ConfigError("adapter_name", adapter_name, "no adapter of that name is attached to the model")
    return states, configs


def adapter_state(unet: Any, text_encoder: Any = None, adapter_name: str = "default"
                  ) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict]]:
    """SD 1.x's adapter as (unet, text encoder) peft state dicts and configs; see adapter_states."""
    states, configs = adapter_states({"unet": unet, "text_encoder": text_encoder}, adapter_name)
    return states.get("unet", {}), states.get("text_encoder", {}), configs


def write_diffusers_lora(path: str | os.PathLike, states: Mapping[str, Mapping[str, Any]], configs: Mapping[str, dict],
                         *, overwrite: bool = False) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` the way diffusers' ``save_lora_weights`` lays it
    out: ``unet.*``, ``text_encoder.*`` (and SDXL's ``text_encoder_2.*``) keys, peft configs in the header."""
    from safetensors.torch import save_file

    states = {c: sd for c, sd in states.items() if sd}
    tensors = {f"{comp}.{k}": v for comp, sd in states.items() for k, v in sd.items()}
    flat_meta = {f"{comp}.{k}": v for comp, cfg in configs.items() for k, v in cfg.items()}
    header = {"format": "pt", ADAPTER_METADATA_KEY: json.dumps(flat_meta, indent=2, sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header), overwrite=overwrite)


def write_kohya_lora(path: str | os.PathLike, states: Mapping[str, Mapping[str, Any]], configs: Mapping[str, dict],
                     *, family: Any = None, layers_per_block: int = 2, extra_metadata: Mapping[str, Any] | None = None,
                     overwrite: bool = False) -> Path:
    """Write a kohya/A1111 LoRA file (``lora_unet_*``, ``lora_te_*`` or SDXL's ``lora_te1_*`` /
    ``lora_te2_*``, per-module ``alpha``)."""
    from safetensors.torch import save_file

    states = {c: sd for c, sd in states.items() if sd}
    alphas = {}
    for comp, sd in states.items():
        for key in sd:
            module = key.partition(".lora_")[0]
            cfg = configs.get(comp)
            if cfg is None:
                raise ConfigError("configs", comp, "a peft config (rank, alpha) is needed for every component")
            alphas[f"{comp}.{module}"] = _module_alpha(cfg, module.removeprefix("text_model."))
    from ..models.family import SD1

    family = family or SD1
    tensors = peft_to_kohya(states, alphas, family=family, layers_per_block=layers_per_block)
    main_cfg = configs.get("unet") or next(iter(configs.values()), {})
    # kohya's ss_* fields are what A1111 / civitai show about a LoRA; values must be strings.
    header = {
        "format": "pt",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(main_cfg.get("r", "")),
        "ss_network_alpha": str(main_cfg.get("lora_alpha", "")),
        "ss_base_model_version": family.kohya_base_model,
        "ss_network_args": json.dumps({}),
    }
    if "unet" in states:
        header["ss_network_train_unet_only"] = str(not any(c in states for c in TEXT_COMPONENTS))
    header.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra_metadata or {}).items()})
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header), overwrite=overwrite)


def save_lora(unet: Any, text_encoder: Any, out_dir: str | os.PathLike, name: str, *,
              text_encoder_2: Any = None, adapter_name: str = "default", overwrite: bool = False,
              kohya_metadata: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Save an attached adapter in both formats: ``pytorch_lora_weights.safetensors`` and
    ``NAME.safetensors`` (kohya; SDXL naming when the UNet is SDXL's)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    states, configs = adapter_states({"unet": unet, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2},
                                     adapter_name)
    diffusers_path = write_diffusers_lora(out / LORA_WEIGHTS_NAME, states, configs, overwrite=overwrite)
    kohya_path = write_kohya_lora(out / f"{name}.safetensors", states, configs, family=lora_family({}, unet.config),
                                  layers_per_block=_layers_per_block(unet.config),
                                  extra_metadata={"ss_output_name": name, **(kohya_metadata or {})},
                                  overwrite=overwrite)
    return {"diffusers": diffusers_path, "kohya": kohya_path}


def _layers_per_block(unet_config: Any) -> int:
    layers = unet_config.get("layers_per_block", 2) if hasattr(unet_config, "get") else unet_config.layers_per_block
    return int(layers[0] if isinstance(layers, (list, tuple)) else layers)


def convert_lora(src: str | os.PathLike, dst: str | os.PathLike, to: Literal["kohya", "diffusers"], *,
                 overwrite: bool = False, lora_dir: str | os.PathLike = DEFAULT_LORA_DIR) -> Path:
    """Rewrite a LoRA file in the other format (kohya/A1111 <-> diffusers/peft)."""
    if to not in ("kohya", "diffusers"):
        raise ConfigError("to", to, "use 'kohya' or 'diffusers'")
    if Path(dst).suffix.lower() != ".safetensors":
        # A .ckpt/.pt name would hold safetensors bytes that every loader (ours too) takes for a pickle.
        raise ConfigError("dst", str(dst), f"LoRAs are written as safetensors: name the file "
                          f"{Path(dst).with_suffix('.safetensors').name!r}")
    path = resolve_lora_path(src, lora_dir)
    raw, meta = read_lora_file(path)
    weights = split_lora(raw, meta, source=str(path))
    if weights.extra_keys:
        raise ConfigError("lora", str(path), f"it has weights for components neither SD 1.x nor SDXL has "
                          f"({weights.extra_keys[0]}, ...); only SD 1.x and SDXL LoRAs convert")
    configs = dict(weights.configs)
    # split_lora rebuilt kohya files' configs; older diffusers files (no header) get them from their shapes.
    for comp, sd in weights.states.items():
        if comp in configs:
            continue
        configs[comp] = _kohya_config(comp, sd, raw, FAMILIES[weights.family])
    if to == "kohya":
        return write_kohya_lora(dst, weights.states, configs, family=FAMILIES[weights.family],
                                extra_metadata={"ss_output_name": Path(dst).stem}, overwrite=overwrite)
    return write_diffusers_lora(dst, weights.states, configs, overwrite=overwrite)


def guess_architecture(weights: LoraWeights) -> str | None:
    """A short description of the model a LoRA was made for, from its keys and shapes."""
    if weights.text_encoder_2 or weights.extra_keys and any("te2" in k or "text_encoder_2" in k
                                                            for k in weights.extra_keys):
        return "SDXL (it has weights for a second text encoder)"
    if weights.extra_keys and any(k.startswith(("transformer.", "lora_transformer")) for k in weights.extra_keys):
        return "a transformer-based model (SD3 / Flux)"
    widths = {v.shape[1] for k, v in weights.unet.items() if ".attn2.to_k.lora_A." in k}
    names = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
    if len(widths) == 1:
        w = widths.pop()
        return f"{names[w]} (cross-attention width {w})" if w in names else f"a model with cross-attention width {w}"
    return None


@dataclass
class LoraInfo:
    """What a LoRA file holds, read without touching any model."""

    path: Path
    format: LoraFormat
    components: tuple[str, ...]
    rank: int | None
    alpha: float | None
    num_modules: int
    made_for: str | None
    metadata: dict[str, str]


def inspect_lora(path_or_name: str | os.PathLike, lora_dir: str | os.PathLike = DEFAULT_LORA_DIR) -> LoraInfo:
    """Describe a LoRA file: its format, rank, alpha and the model it seems to be made for."""
    path = resolve_lora_path(path_or_name, lora_dir)
    raw, meta = read_lora_file(path)
    w = split_lora(raw, meta, source=str(path))
    comps = tuple(w.states)
    alpha = None
    if w.configs:
        alpha = float(next(iter(w.configs.values())).get("lora_alpha"))
    elif w.network_alphas:
        alpha = collections.Counter(w.network_alphas.values()).most_common(1)[0][0]
    n = sum(1 for sd in w.states.values() for k in sd if ".lora_A." in k)
    return LoraInfo(path=path, format=w.format, components=comps, rank=w.rank, alpha=alpha,
                    num_modules=n, made_for=guess_architecture(w), metadata=meta)
