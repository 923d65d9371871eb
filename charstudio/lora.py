"""LoRA adapters for SD 1.x: load, save, convert between formats, and mix.

Two file formats are written and read:

* ``diffusers`` -- ``pytorch_lora_weights.safetensors``: peft keys prefixed with the component
  (``unet.down_blocks.0...to_q.lora_A.weight``) and the peft ``LoraConfig`` of each component in
  the safetensors header (``lora_adapter_metadata``), so rank and alpha come back exactly.
  This is what ``pipe.load_lora_weights`` and ``save_lora_weights`` use.
* ``kohya`` -- ``NAME.safetensors``: ``lora_unet_*`` / ``lora_te_*`` keys with ``lora_down`` /
  ``lora_up`` / ``alpha`` (kohya sd-scripts, A1111, ComfyUI, most civitai files).

Older diffusers files (``.lora.down.weight``, ``to_q_lora``, ``lora_linear_layer``) load too.
Every file is checked against the model (module names and tensor shapes) *before* anything is
loaded, so a LoRA for another architecture fails with a message that says so and leaves the
model untouched. Only safetensors files are read: pickled LoRA files can run code when loaded.

The functions that act on a model take ``pipe``: any diffusers SD 1.x pipeline (or object with
``unet`` and ``text_encoder`` attributes). Pipelines that share one UNet share its adapters.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping

from .errors import ConfigError, ModelLoadError
from .io_utils import atomic_write
from .models.loading import PICKLE_SUFFIXES  # one list for models and LoRAs

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
DEFAULT_LORA_DIR = "lora"
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' header key for the peft configs
UNET_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")

LoraFormat = Literal["diffusers", "diffusers_legacy", "kohya"]
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha", ".dora_scale")

# Adapter weights set through this module, per UNet (pipelines share UNets, so the UNet is the key).
_ADAPTER_WEIGHTS: "weakref.WeakKeyDictionary[Any, dict[str, float]]" = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------------------------
# Finding and reading files
# --------------------------------------------------------------------------------------------


def resolve_lora_path(path_or_name: str | os.PathLike, lora_dir: str | os.PathLike = DEFAULT_LORA_DIR) -> Path:
    """Turn a file, a LoRA folder, or a trained LoRA's name (``lora/NAME/``) into a weights file."""
    raw = str(path_or_name)
    if not raw.strip():
        raise ConfigError("lora", raw, "give a .safetensors file, a LoRA folder, or the name of a LoRA under lora/")
    p = Path(raw).expanduser()
    candidates: list[Path] = []
    if p.is_file():
        candidates = [p]
    elif p.is_dir():
        candidates = [p / LORA_WEIGHTS_NAME, p / f"{p.name}.safetensors"]
    else:
        base = Path(lora_dir).expanduser()
        candidates = [base / raw / LORA_WEIGHTS_NAME, base / raw / f"{raw}.safetensors", base / f"{raw}.safetensors"]
    for c in candidates:
        if c.is_file():
            if c.suffix.lower() in PICKLE_SUFFIXES:
                raise ConfigError("lora", raw, "pickled LoRA files (.ckpt/.pt/.bin) can run code when loaded; "
                                  "use a .safetensors file")
            if c.suffix.lower() != ".safetensors":
                raise ConfigError("lora", raw, "LoRA files must be .safetensors")
            return c
    if p.is_dir():
        others = sorted(x.name for x in p.glob("*.safetensors"))
        if len(others) == 1:
            return p / others[0]
        raise ConfigError("lora", raw, f"the folder has no {LORA_WEIGHTS_NAME}"
                          + (f"; pick one of {others}" if others else " and no .safetensors file"))
    known = list_loras(lora_dir)
    raise ConfigError("lora", raw, "no such file or folder, and no LoRA of that name under "
                      f"{str(lora_dir)!r}" + (f" (known: {', '.join(known)})" if known else ""))


def list_loras(lora_dir: str | os.PathLike = DEFAULT_LORA_DIR) -> list[str]:
    """Names of the trained LoRAs under ``lora_dir`` (folders holding ``pytorch_lora_weights.safetensors``)."""
    base = Path(lora_dir).expanduser()
    if not base.is_dir():
        return []
    # Hidden folders are an overwrite's staging copy (charstudio.training.staging_dir), not a LoRA.
    return sorted(d.name for d in base.iterdir() if not d.name.startswith(".") and (d / LORA_WEIGHTS_NAME).is_file())


def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:
    """The tensors and the header metadata of a safetensors LoRA file."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    tensors: dict[str, Any] = {}
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError) as exc:
        raise ConfigError("lora", str(p), f"cannot be read as a safetensors file ({exc})") from exc
    if not tensors:
        raise ConfigError("lora", str(p), "the file holds no tensors")
    return tensors, metadata


def detect_format(state_dict: Mapping[str, Any], source: str = "state dict") -> LoraFormat:
    """Name the LoRA key convention of ``state_dict``, or raise saying which formats would work."""
    keys = list(state_dict)
    if any(".hada_" in k or k.endswith((".hada_w1_a", ".lokr_w1")) or ".lokr_" in k for k in keys):
        raise ConfigError("lora", source, "this is a LyCORIS LoHa/LoKr file, which charstudio does not load; "
                          "use a plain LoRA (kohya lora_down/lora_up or diffusers lora_A/lora_B)")
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


# --------------------------------------------------------------------------------------------
# Conversion between the on-disk formats and per-component peft state dicts
# --------------------------------------------------------------------------------------------


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
    extra_keys: list[str] = field(default_factory=list)  # keys for components SD 1.x does not have
    file_metadata: dict[str, str] = field(default_factory=dict)

    @property
    def rank(self) -> int | None:
        ranks = [v.shape[0] for k, v in {**self.unet, **self.text_encoder}.items() if ".lora_A." in k]
        return collections.Counter(ranks).most_common(1)[0][0] if ranks else None


def _kohya_module_name(component: str, module: str) -> str:
    prefix = "lora_unet_" if component == "unet" else "lora_te_"
    return prefix + module.replace(".", "_")


def split_lora(state_dict: Mapping[str, Any], file_metadata: Mapping[str, str] | None = None,
               *, unet_config: Any = None, source: str = "state dict") -> LoraWeights:
    """Convert a LoRA state dict in any supported format into per-component peft state dicts.

    The key conversion is diffusers' own (the one ``load_lora_weights`` applies), so what is
    checked here is exactly what would be loaded.
    """
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    fmt = detect_format(state_dict, source)
    file_metadata = dict(file_metadata or {})
    raw = dict(state_dict)
    # 1. diffusers drops DoRA scales with only a warning; refuse instead of loading something different.
    if any(k.endswith(".dora_scale") or "lora_magnitude_vector" in k for k in raw):
        raise ConfigError("lora", source, "DoRA LoRAs are not supported; use a plain LoRA")
    extra = [k for k in raw if k.startswith(("lora_te2_", "text_encoder_2."))]
    # 2. Let diffusers rename kohya / legacy keys (it also maps LDM-style input_blocks names).
    try:
        converted, network_alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(
            {k: v for k, v in raw.items() if k not in extra}, unet_config=unet_config)
    except (ValueError, KeyError, IndexError) as exc:
        raise ConfigError("lora", source, f"its keys could not be mapped to an SD 1.x model ({exc})") from exc

    unet_sd = {k[len("unet."):]: v for k, v in converted.items() if k.startswith("unet.")}
    te_sd = {k[len("text_encoder."):]: v for k, v in converted.items() if k.startswith("text_encoder.")}
    extra += [k for k in converted if not k.startswith(("unet.", "text_encoder."))]
    # 3. Same normalisation as diffusers' load_lora_into_unet / _load_lora_into_text_encoder.
    if unet_sd and "lora_A" not in next(iter(unet_sd)):
        unet_sd = convert_unet_state_dict_to_peft(unet_sd)
    if te_sd:
        te_sd = convert_state_dict_to_peft(convert_state_dict_to_diffusers(te_sd))

    configs: dict[str, dict] = {}
    raw_meta = file_metadata.get(ADAPTER_METADATA_KEY)
    if raw_meta:
        try:
            flat = json.loads(raw_meta)
        except json.JSONDecodeError as exc:
            raise ConfigError("lora", source, f"its {ADAPTER_METADATA_KEY} header is not valid JSON") from exc
        for comp in ("unet", "text_encoder"):
            sub = {k[len(comp) + 1:]: v for k, v in flat.items() if k.startswith(comp + ".")}
            if sub:
                configs[comp] = sub
    return LoraWeights(unet=unet_sd, text_encoder=te_sd, format=fmt, configs=configs,
                       network_alphas=network_alphas or None, extra_keys=extra, file_metadata=file_metadata)


def peft_to_kohya(unet_sd: Mapping[str, Any], text_encoder_sd: Mapping[str, Any],
                  alphas: Mapping[str, float]) -> dict[str, "torch.Tensor"]:
    """kohya/A1111 keys from peft state dicts; ``alphas`` maps ``component.module`` to its alpha.

    Text-encoder modules get the ``text_model.`` prefix that A1111 and ComfyUI expect, even when
    the installed transformers no longer has that level.
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    for comp, sd in (("unet", unet_sd), ("text_encoder", text_encoder_sd)):
        for key, tensor in sd.items():
            if ".lora_A." not in key and ".lora_B." not in key:
                raise ConfigError("lora", key, "only lora_A/lora_B weights can be written in kohya format")
            module, _, rest = key.partition(".lora_")
            alpha_key = f"{comp}.{module}"
            if comp == "text_encoder" and not module.startswith("text_model."):
                module = "text_model." + module
            base = _kohya_module_name(comp, module)
            if rest.startswith("A."):
                out[base + ".lora_down.weight"] = tensor.contiguous()
                out[base + ".alpha"] = torch.tensor(float(alphas[alpha_key]), dtype=torch.float32)
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


def adapter_state(unet: Any, text_encoder: Any = None, adapter_name: str = "default"
                  ) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict]]:
    """The trained adapter ``adapter_name`` as peft state dicts (unet, text encoder) and configs."""
    from peft.utils import get_peft_model_state_dict

    configs: dict[str, dict] = {}
    unet_sd: dict[str, Any] = {}
    te_sd: dict[str, Any] = {}
    if adapter_name in getattr(unet, "peft_config", {}):
        unet_sd = {k: v.detach().float().cpu().contiguous()
                   for k, v in get_peft_model_state_dict(unet, adapter_name=adapter_name).items()}
        configs["unet"] = _json_config(unet.peft_config[adapter_name])
    if text_encoder is not None and adapter_name in getattr(text_encoder, "peft_config", {}):
        te_sd = {k: v.detach().float().cpu().contiguous()
                 for k, v in get_peft_model_state_dict(text_encoder, adapter_name=adapter_name).items()}
        if not hasattr(text_encoder, "text_model"):
            # Older transformers (and every other tool) name these text_model.encoder...; the
            # diffusers loader strips the prefix again when the model lacks that level.
            te_sd = {("text_model." + k if not k.startswith("text_model.") else k): v for k, v in te_sd.items()}
        configs["text_encoder"] = _json_config(text_encoder.peft_config[adapter_name])
    if not unet_sd and not te_sd:
        raise ConfigError("adapter_name", adapter_name, "no adapter of that name is attached to the model")
    return unet_sd, te_sd, configs


def write_diffusers_lora(path: str | os.PathLike, unet_sd: Mapping[str, Any], text_encoder_sd: Mapping[str, Any],
                         configs: Mapping[str, dict], *, overwrite: bool = False) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` the way diffusers' ``save_lora_weights`` lays it out."""
    from safetensors.torch import save_file

    tensors = {f"unet.{k}": v for k, v in unet_sd.items()}
    tensors.update({f"text_encoder.{k}": v for k, v in text_encoder_sd.items()})
    flat_meta = {f"{comp}.{k}": v for comp, cfg in configs.items() for k, v in cfg.items()}
    header = {"format": "pt", ADAPTER_METADATA_KEY: json.dumps(flat_meta, indent=2, sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header), overwrite=overwrite)


def write_kohya_lora(path: str | os.PathLike, unet_sd: Mapping[str, Any], text_encoder_sd: Mapping[str, Any],
                     configs: Mapping[str, dict], *, extra_metadata: Mapping[str, Any] | None = None,
                     overwrite: bool = False) -> Path:
    """Write a kohya/A1111 LoRA file (``lora_unet_*``, ``lora_te_*``, per-module ``alpha``)."""
    from safetensors.torch import save_file

    alphas = {}
    for comp, sd in (("unet", unet_sd), ("text_encoder", text_encoder_sd)):
        for key in sd:
            module = key.partition(".lora_")[0]
            cfg = configs.get(comp)
            if cfg is None:
                raise ConfigError("configs", comp, "a peft config (rank, alpha) is needed for every component")
            alphas[f"{comp}.{module}"] = _module_alpha(cfg, module.removeprefix("text_model."))
    tensors = peft_to_kohya(unet_sd, text_encoder_sd, alphas)
    main_cfg = configs.get("unet") or configs.get("text_encoder") or {}
    # kohya's ss_* fields are what A1111 / civitai show about a LoRA; values must be strings.
    header = {
        "format": "pt",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(main_cfg.get("r", "")),
        "ss_network_alpha": str(main_cfg.get("lora_alpha", "")),
        "ss_base_model_version": "sd_v1",
        "ss_network_args": json.dumps({}),
    }
    if text_encoder_sd and not unet_sd:
        header["ss_network_train_unet_only"] = "False"
    header.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra_metadata or {}).items()})
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header), overwrite=overwrite)


def save_lora(unet: Any, text_encoder: Any, out_dir: str | os.PathLike, name: str, *,
              adapter_name: str = "default", overwrite: bool = False,
              kohya_metadata: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Save an attached adapter in both formats: ``pytorch_lora_weights.safetensors`` and ``NAME.safetensors``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unet_sd, te_sd, configs = adapter_state(unet, text_encoder, adapter_name)
    diffusers_path = write_diffusers_lora(out / LORA_WEIGHTS_NAME, unet_sd, te_sd, configs, overwrite=overwrite)
    kohya_path = write_kohya_lora(out / f"{name}.safetensors", unet_sd, te_sd, configs,
                                  extra_metadata={"ss_output_name": name, **(kohya_metadata or {})},
                                  overwrite=overwrite)
    return {"diffusers": diffusers_path, "kohya": kohya_path}


def convert_lora(src: str | os.PathLike, dst: str | os.PathLike, to: Literal["kohya", "diffusers"], *,
                 overwrite: bool = False, lora_dir: str | os.PathLike = DEFAULT_LORA_DIR) -> Path:
    """Rewrite a LoRA file in the other format (kohya/A1111 <-> diffusers/peft)."""
    if to not in ("kohya", "diffusers"):
        raise ConfigError("to", to, "use 'kohya' or 'diffusers'")
    path = resolve_lora_path(src, lora_dir)
    raw, meta = read_lora_file(path)
    weights = split_lora(raw, meta, source=str(path))
    if weights.extra_keys:
        raise ConfigError("lora", str(path), "it has weights for components SD 1.x does not have "
                          f"({weights.extra_keys[0]}, ...); only SD 1.x LoRAs convert")
    configs = dict(weights.configs)
    # Without recorded configs (kohya input) rebuild them from the shapes and kohya's alphas.
    for comp, sd in (("unet", weights.unet), ("text_encoder", weights.text_encoder)):
        if not sd or comp in configs:
            continue
        ranks = {k.partition(".lora_")[0]: v.shape[1] for k, v in sd.items() if ".lora_B." in k}
        alphas = {}
        for module, r in ranks.items():
            kohya_module = module if comp == "unet" or module.startswith("text_model.") else "text_model." + module
            a = raw.get(_kohya_module_name(comp, kohya_module) + ".alpha")
            alphas[module] = float(a.item()) if a is not None else float(r)
        r = collections.Counter(ranks.values()).most_common(1)[0][0]
        alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
        # peft matches target names as suffixes, so names without text_model. fit both old
        # transformers (text_model.encoder...) and new (encoder...).
        short = {m: m.removeprefix("text_model.") for m in ranks}
        configs[comp] = {
            "r": r, "lora_alpha": alpha,
            "target_modules": sorted(short.values()),
            "rank_pattern": {short[m]: v for m, v in ranks.items() if v != r},
            "alpha_pattern": {short[m]: v for m, v in alphas.items() if v != alpha},
        }
    if to == "kohya":
        return write_kohya_lora(dst, weights.unet, weights.text_encoder, configs,
                                extra_metadata={"ss_output_name": Path(dst).stem}, overwrite=overwrite)
    return write_diffusers_lora(dst, weights.unet, weights.text_encoder, configs, overwrite=overwrite)


# --------------------------------------------------------------------------------------------
# Checking a LoRA against a model before loading it
# --------------------------------------------------------------------------------------------


def _guess_architecture(weights: LoraWeights) -> str | None:
    """A short description of the model a LoRA was made for, from its keys and shapes."""
    if weights.extra_keys and any("te2" in k or "text_encoder_2" in k for k in weights.extra_keys):
        return "SDXL (it has weights for a second text encoder)"
    if weights.extra_keys and any(k.startswith(("transformer.", "lora_transformer")) for k in weights.extra_keys):
        return "a transformer-based model (SD3 / Flux)"
    widths = {v.shape[1] for k, v in weights.unet.items() if ".attn2.to_k.lora_A." in k}
    names = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
    if len(widths) == 1:
        w = widths.pop()
        return f"{names[w]} (cross-attention width {w})" if w in names else f"a model with cross-attention width {w}"
    return None


def _model_kind(unet: Any) -> str:
    width = getattr(unet.config, "cross_attention_dim", None)
    names = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
    return f"{names.get(width, 'this model')} (cross-attention width {width})"


def _base_module(module: Any) -> Any:
    # After a first LoRA is loaded, peft wraps the target; its shape lives on base_layer.
    return getattr(module, "base_layer", module)


def _io_dims(module: Any) -> tuple[int, int] | None:
    if hasattr(module, "in_features"):
        return module.in_features, module.out_features
    if hasattr(module, "in_channels"):
        return module.in_channels, module.out_channels
    return None


def check_lora_fits(weights: LoraWeights, unet: Any, text_encoder: Any, source: str = "lora") -> None:
    """Raise unless every LoRA module exists in the model with matching shapes (nothing is loaded)."""
    problems: list[str] = []
    if weights.extra_keys:
        problems.append(f"{len(weights.extra_keys)} weights for components this model does not have "
                        f"(e.g. {weights.extra_keys[0]})")
    comps = (("unet", weights.unet, unet), ("text_encoder", weights.text_encoder, text_encoder))
    for comp, sd, model in comps:
        if not sd:
            continue
        if model is None:
            problems.append(f"weights for a {comp} the pipeline does not have")
            continue
        if comp == "text_encoder" and not hasattr(model, "text_model"):
            sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
        modules = dict(model.named_modules())
        for key, tensor in sd.items():
            module_name, _, rest = key.partition(".lora_")
            module = modules.get(module_name)
            if module is None:
                problems.append(f"{comp}.{module_name} does not exist in the model")
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
    if problems:
        made_for = _guess_architecture(weights)
        head = (f"it looks like a LoRA for {made_for}, but the model is {_model_kind(unet)}"
                if made_for else f"it does not fit the model ({_model_kind(unet)})")
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError("lora", source, f"{head}: {'; '.join(problems[:3])}{more}. "
                          "Nothing was loaded; use a LoRA trained for this base model")


# --------------------------------------------------------------------------------------------
# Loading, mixing, unloading, fusing
# --------------------------------------------------------------------------------------------


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
    comps = tuple(c for c, sd in (("unet", w.unet), ("text_encoder", w.text_encoder)) if sd)
    alpha = None
    if w.configs:
        alpha = float(next(iter(w.configs.values())).get("lora_alpha"))
    elif w.network_alphas:
        alpha = collections.Counter(w.network_alphas.values()).most_common(1)[0][0]
    n = sum(1 for k in {**w.unet, **w.text_encoder} if ".lora_A." in k)
    return LoraInfo(path=path, format=w.format, components=comps, rank=w.rank, alpha=alpha,
                    num_modules=n, made_for=_guess_architecture(w), metadata=meta)


def _adapter_names(pipe: Any) -> list[str]:
    names: list[str] = []
    for comp in ("unet", "text_encoder"):
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


def remove_adapter(unet: Any, text_encoder: Any, adapter_name: str) -> None:
    """Take adapter ``adapter_name`` out of a UNet and a text encoder (either may lack it)."""
    from .compat import remove_text_encoder_adapter

    if unet is not None and adapter_name in (getattr(unet, "peft_config", None) or {}):
        unet.delete_adapters([adapter_name])
    if text_encoder is not None:
        remove_text_encoder_adapter(text_encoder, adapter_name)


def _remove_adapter(pipe: Any, adapter_name: str) -> None:
    remove_adapter(getattr(pipe, "unet", None), getattr(pipe, "text_encoder", None), adapter_name)


def load_lora(pipe: Any, path_or_name: str | os.PathLike, *, weight: float = 1.0, adapter_name: str | None = None,
              lora_dir: str | os.PathLike = DEFAULT_LORA_DIR) -> str:
    """Load a LoRA (ours, kohya/A1111, civitai) into ``pipe`` as adapter ``adapter_name``; return the name.

    The new adapter is active with ``weight`` alongside the adapters already active. Everything is
    checked before loading, and a failure while loading removes the half-loaded adapter.
    """
    import math

    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin

    if not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ConfigError("weight", weight, "use a finite number (1.0 = full strength, 0 = off)")
    # 1. Find and read the file; work out its format.
    path = resolve_lora_path(path_or_name, lora_dir)
    raw, meta = read_lora_file(path)
    unet, text_encoder = pipe.unet, getattr(pipe, "text_encoder", None)
    weights = split_lora(raw, meta, unet_config=unet.config, source=str(path))
    # 2. Check modules and shapes before the model is touched.
    check_lora_fits(weights, unet, text_encoder, source=str(path))
    if adapter_name is None:
        adapter_name = default_adapter_name(path)
    if adapter_name in _adapter_names(pipe):
        raise ConfigError("adapter_name", adapter_name, "an adapter of that name is already loaded; "
                          "unload it first or pass another adapter_name")
    if any(ch in adapter_name for ch in ". "):
        raise ConfigError("adapter_name", adapter_name, "use letters, digits, '_' and '-' only")
    # 3. Load each component through diffusers' loaders; our files carry exact peft configs.
    te_sd = weights.text_encoder
    try:
        if weights.unet:
            alphas = None
            if "unet" not in weights.configs and weights.network_alphas:
                alphas = {k: v for k, v in weights.network_alphas.items() if k.startswith("unet.")}
            StableDiffusionLoraLoaderMixin.load_lora_into_unet(
                {f"unet.{k}": v for k, v in weights.unet.items()}, network_alphas=alphas or None, unet=unet,
                adapter_name=adapter_name, metadata=_prefixed(weights.configs.get("unet"), "unet"))
        if te_sd:
            alphas = None
            if "text_encoder" not in weights.configs and weights.network_alphas:
                alphas = {k: v for k, v in weights.network_alphas.items() if k.startswith("text_encoder.")}
            StableDiffusionLoraLoaderMixin.load_lora_into_text_encoder(
                {f"text_encoder.{k}": v for k, v in te_sd.items()}, network_alphas=alphas or None,
                text_encoder=text_encoder, adapter_name=adapter_name,
                metadata=_prefixed(weights.configs.get("text_encoder"), "text_encoder"))
    except Exception as exc:
        _remove_adapter(pipe, adapter_name)
        raise ModelLoadError(f"lora={str(path)!r} could not be loaded ({exc}); the model was left unchanged") from exc
    # 4. Keep the other active adapters and add this one at its weight.
    mix = dict(active_loras(pipe))
    mix[adapter_name] = float(weight)
    set_loras(pipe, mix)
    log.info("loaded LoRA %s (%s format, rank %s) as %r at weight %s", path, weights.format, weights.rank,
             adapter_name, weight)
    return adapter_name


def _prefixed(config: Mapping[str, Any] | None, prefix: str) -> dict | None:
    return {f"{prefix}.{k}": v for k, v in config.items()} if config else None


def active_loras(pipe: Any) -> dict[str, float]:
    """The adapters in use and their weights, in the order they were set."""
    unet = pipe.unet
    known = set(_adapter_names(pipe))
    return {k: v for k, v in _ADAPTER_WEIGHTS.get(unet, {}).items() if k in known}


def set_loras(pipe: Any, weights: Mapping[str, float]) -> None:
    """Use exactly the adapters in ``weights`` (name -> weight); others stay loaded but off."""
    import math

    known = _adapter_names(pipe)
    for name, w in weights.items():
        if name not in known:
            raise ConfigError("loras", name, f"no adapter of that name is loaded (loaded: {known or 'none'})")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ConfigError(f"loras[{name!r}]", w, "use a finite number (1.0 = full strength, 0 = off)")
    names = list(weights)
    values = [float(weights[n]) for n in names]
    if dict(zip(names, values)) != active_loras(pipe) and fused_loras(pipe):
        raise ConfigError("loras", dict(weights), "the active adapters are fused into the model; "
                          "call unfuse_loras() before changing them")
    _set_adapters(pipe, names, values)
    _ADAPTER_WEIGHTS[pipe.unet] = dict(zip(names, values))


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
    te = getattr(pipe, "text_encoder", None)
    if te is not None and getattr(te, "peft_config", None):
        te_names = [n for n in names if n in te.peft_config]
        if te_names:
            enable_lora_for_text_encoder(te)
            set_adapters_for_text_encoder(te_names, te, [values[names.index(n)] for n in te_names])
        else:
            disable_lora_for_text_encoder(te)


def unload_loras(pipe: Any, names: Iterable[str] | None = None) -> None:
    """Remove adapters (all when ``names`` is None), restoring the base model's layers."""
    from .compat import remove_all_text_encoder_adapters

    if fused_loras(pipe):
        unfuse_loras(pipe)
    if names is None:
        if getattr(pipe.unet, "peft_config", None):
            pipe.unet.unload_lora()
        te = getattr(pipe, "text_encoder", None)
        if te is not None:
            remove_all_text_encoder_adapters(te)
        _ADAPTER_WEIGHTS[pipe.unet] = {}
        return
    names = list(names)
    known = _adapter_names(pipe)
    for n in names:
        if n not in known:
            raise ConfigError("loras", n, f"no adapter of that name is loaded (loaded: {known or 'none'})")
    remaining = {k: v for k, v in active_loras(pipe).items() if k not in names}
    for n in names:
        _remove_adapter(pipe, n)
    set_loras(pipe, remaining)


def _tuner_layers(pipe: Any) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = []
    for comp in ("unet", "text_encoder"):
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


def fuse_loras(pipe: Any) -> list[str]:
    """Merge the active adapters, at their weights, into the base weights (faster sampling).

    ``unfuse_loras`` (or ``unload_loras``) reverses it.
    """
    active = active_loras(pipe)
    if not active:
        raise ConfigError("loras", {}, "no adapter is active; load one with load_lora first")
    names = list(active)
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
