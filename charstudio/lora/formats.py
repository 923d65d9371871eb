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
from typing import Any, Literal, Mapping

from ..errors import ConfigError, describe
from ..io_utils import atomic_write
from ..models.family import DEFAULT_FAMILY, FAMILIES, architecture_of_width, family_of_keys, family_of_lora, family_of_unet
from .files import DEFAULT_LORA_DIR, LORA_WEIGHTS_NAME, read_lora_file, resolve_lora_path
from .kohya import (
    KOHYA_PREFIXES,
    KOHYA_SUFFIXES,
    add_dora_magnitudes,
    check_kohya_header,
    kohya_config,
    unet_layers_per_block,
    write_kohya_lora,
)

log = logging.getLogger(__name__)

ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' header key for the peft configs
UNET_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")

LoraFormat = Literal["diffusers", "diffusers_legacy", "kohya"]
# Every family's text encoders, in order (SD 1.x has the first; SDXL both): the parts a LoRA can adapt.
TEXT_COMPONENTS = tuple(dict.fromkeys(enc for f in FAMILIES.values() for _, enc in f.text_parts))
COMPONENTS = ("unet", *TEXT_COMPONENTS)


def detect_format(state_dict: Mapping[str, Any], source: str = "state dict") -> LoraFormat:
    """Name the LoRA key convention of ``state_dict``, or raise saying which formats would work."""
    keys = list(state_dict)
    for mark, name in ((".hada_", "LoHa"), (".lokr_", "LoKr"), (".oft_", "OFT"), (".glora_", "GLoRA")):
        if any(mark in k for k in keys):
            raise ConfigError("lora", source, f"this is a LyCORIS {name} file ({next(k for k in keys if mark in k)}), "
                              "which diffusers and peft cannot load as a LoRA adapter; use a plain LoRA "
                              "(kohya lora_down/lora_up or diffusers lora_A/lora_B)")
    if all(k.startswith(KOHYA_PREFIXES) and k.endswith(KOHYA_SUFFIXES) for k in keys):
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


def _frozen_config(config: dict) -> Any:
    """A config dict readable as attributes too, as diffusers' converters read a model's config."""
    from diffusers.configuration_utils import FrozenDict

    return FrozenDict(config)


def split_lora(state_dict: Mapping[str, Any], file_metadata: Mapping[str, str] | None = None,
               *, unet_config: Any = None, source: str = "state dict") -> LoraWeights:
    """Convert a LoRA state dict in any supported format into per-component peft state dicts.

    The key conversion is diffusers' own (the one ``load_lora_weights`` applies), so what is
    checked here is exactly what would be loaded.
    """
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    fmt = detect_format(state_dict, source)
    file_metadata = dict(file_metadata or {})
    raw = dict(state_dict)
    _check_halves(raw, source)
    if fmt == "kohya":
        check_kohya_header(raw, file_metadata, source)
    # 1. diffusers' kohya reader drops DoRA scales with only a warning: take them out here and
    #    give them back to their modules as peft's magnitude vectors (below).
    dora = {k[:-len(".dora_scale")]: raw.pop(k) for k in list(raw) if k.endswith(".dora_scale")}
    if any("lora_magnitude_vector" in k for k in raw) and fmt != "diffusers":
        raise ConfigError("lora", source, "its DoRA magnitudes are in a layout charstudio does not read; "
                          "use a kohya (dora_scale) or diffusers/peft (lora_magnitude_vector) file")
    family = family_of_lora(raw, unet_config, source)
    if family.kohya_sgm_unet and unet_config is None:  # SGM block names map through the base UNet's layout
        from diffusers import UNet2DConditionModel

        unet_config = _frozen_config(UNet2DConditionModel.load_config(family.config_folder() / "unet"))
    # Keys for a text encoder the family does not have (SD 1.x: a second one) are named, not loaded.
    has = {enc for _, enc in family.text_parts}
    lacks = [c for c in TEXT_COMPONENTS if c not in has]
    marks = tuple({f"{c}." for c in lacks} | {f.kohya_prefixes[c] for f in FAMILIES.values() for c in lacks
                                              if c in f.kohya_prefixes})
    extra = [k for k in raw if marks and k.startswith(marks)]
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
    layers_per_block = unet_layers_per_block(unet_config or {})
    if dora:
        add_dora_magnitudes(dora, {"unet": unet_sd, **texts}, family, layers_per_block, source)
    configs: dict[str, dict] = {}
    if fmt == "kohya":
        # 4. Exact peft configs from the file itself: diffusers names kohya's alphas after its own
        #    intermediate keys (``...processor.to_q_lora.down.weight.alpha``), which its config builder
        #    then fails to match to modules, so per-module alphas (LoCon's conv_alpha, per-block
        #    alphas) were lost; and its text-encoder config would not ask for DoRA either.
        for comp, sd in (("unet", unet_sd), *texts.items()):
            if sd:
                configs[comp] = kohya_config(comp, sd, raw, family, layers_per_block)
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


# Each format's two halves of a LoRA module (down/A and up/B), as their keys spell them.
LORA_HALVES = ((".lora_down.", ".lora_up."), (".lora_A.", ".lora_B."), (".lora_linear_layer.down.",
               ".lora_linear_layer.up."), (".lora.down.", ".lora.up."), ("_lora.down.", "_lora.up."))


def _check_halves(state_dict: Mapping[str, Any], source: str) -> None:
    """Refuse a file in which a module has only one of its two halves (down/A, up/B), before any
    conversion: diffusers' converters drop such a module silently (peft keys) or stop with a
    message that names no module (kohya keys)."""
    for key in state_dict:
        for down, up in LORA_HALVES:
            here, other = (down, up) if down in key else (up, down) if up in key else (None, None)
            if here is None:
                continue
            partner = key.replace(here, other, 1)
            if partner not in state_dict:
                module, _, rest = key.partition(here)
                raise ConfigError("lora", source, f"its module {module} has {here[1:]}{rest} but no "
                                  f"{other[1:]}{rest}; every LoRA module needs both halves (the file is "
                                  "damaged or incomplete)")
            break


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
    kohya_path = write_kohya_lora(out / f"{name}.safetensors", states, configs, family=family_of_unet(unet.config),
                                  layers_per_block=unet_layers_per_block(unet.config),
                                  extra_metadata={"ss_output_name": name, **(kohya_metadata or {})},
                                  overwrite=overwrite)
    return {"diffusers": diffusers_path, "kohya": kohya_path}


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
        configs[comp] = kohya_config(comp, sd, raw, FAMILIES[weights.family])
    if to == "kohya":
        return write_kohya_lora(dst, weights.states, configs, family=FAMILIES[weights.family],
                                extra_metadata={"ss_output_name": Path(dst).stem}, overwrite=overwrite)
    return write_diffusers_lora(dst, weights.states, configs, overwrite=overwrite)


def guess_architecture(weights: LoraWeights) -> str | None:
    """A short description of the model a LoRA was made for, from its keys and shapes: a family's
    own keys (SDXL's second text encoder, its SGM block names), else the UNet's cross-attention width."""
    guess = architecture_guess(weights)
    return guess[1] if guess else None


def architecture_guess(weights: LoraWeights) -> tuple[str, str] | None:
    """guess_architecture's (name, description): the name is a family's label, the architecture a
    width belongs to, or "width N" for an unknown one, as `architecture_name_of_unet` names a model."""
    keys = [f"{comp}.{k}" for comp, sd in weights.states.items() for k in sd] + list(weights.extra_keys)
    try:
        family = family_of_keys(keys, "lora")
    except ConfigError:  # two families' marks: the widths below may still tell
        family = None
    if family is not None and family is not DEFAULT_FAMILY:
        example = next(k for k in keys if family.matches_keys([k]))
        return family.label, f"{family.label} (it has {example}, which only {family.label} models have)"
    if weights.extra_keys and any(k.startswith(("transformer.", "lora_transformer")) for k in weights.extra_keys):
        return "transformer", "a transformer-based model (SD3 / Flux)"
    widths = {v.shape[1] for k, v in weights.unet.items() if ".attn2.to_k.lora_A." in k}
    if len(widths) == 1:
        w = widths.pop()
        name = architecture_of_width(w)
        if name:
            return name, f"{name} (cross-attention width {w})"
        return f"width {w}", f"a model with cross-attention width {w}"
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
