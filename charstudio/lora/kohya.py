"""The kohya / A1111 LoRA layout: its module names (SDXL's UNet in SGM block numbering), the peft
configs and DoRA magnitudes rebuilt from a kohya file, and writing one.

The families' kohya key layouts come from `ModelFamily.kohya_prefixes` / `kohya_sgm_unet`: SD 1.x
names its one text encoder lora_te_, SDXL lora_te1_/lora_te2_ with SGM UNet blocks, as kohya
sd-scripts writes and A1111's and ComfyUI's key maps look for.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import ConfigError
from ..io_utils import atomic_write
from ..models.family import DEFAULT_FAMILY, FAMILIES

if TYPE_CHECKING:  # pragma: no cover
    import torch

KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha", ".dora_scale")


def _kohya_module_name(component: str, module: str, family: Any = None, layers_per_block: int = 2) -> str:
    """kohya's name of a peft module in `family`'s layout (default SD 1.x): SDXL's UNet modules in
    the SGM block naming kohya, A1111 and ComfyUI use (``input_blocks_4_1_...``), text encoders in
    Hugging Face naming."""
    family = family or DEFAULT_FAMILY
    if component == "unet" and family.kohya_sgm_unet:
        module = _sgm_unet_module(module, layers_per_block)
    # the family's own prefixes, and another family's for a part it lacks (SD 1.x: SDXL's lora_te2_)
    prefixes = {c: p for f in FAMILIES.values() for c, p in f.kohya_prefixes.items()} | dict(family.kohya_prefixes)
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


def kohya_config(comp: str, sd: Mapping[str, Any], raw: Mapping[str, Any], family: Any,
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


def _network_args(metadata: Mapping[str, str]) -> dict:
    """kohya's ``ss_network_args`` header as a dict ({} when absent or not a JSON object)."""
    try:
        args = json.loads(metadata.get("ss_network_args") or "{}")
    except (json.JSONDecodeError, TypeError):
        return {}
    return args if isinstance(args, dict) else {}


def check_kohya_header(raw: Mapping[str, Any], metadata: Mapping[str, str], source: str) -> None:
    """Refuse a kohya file whose ``ss_*`` header disagrees with its tensors, as the diffusers
    header is checked (formats._checked_header): the tensors are the truth.

    ``ss_network_dim`` is sd-scripts' ``--network_dim``, the rank of its linear (and 1x1) modules;
    3x3 convolutions take ``conv_dim``, and ``block_dims`` / ``network_reg_dims`` give blocks ranks
    of their own, and resized files say "Dynamic". So a file is refused only when no module at all
    has the header's rank and nothing in ``ss_network_args`` gives modules other ranks. DoRA:
    ``algo=dora`` or LyCORIS's ``dora_wd`` with no ``dora_scale`` tensor."""
    args = _network_args(metadata)
    ranks = sorted({int(v.shape[0]) for k, v in raw.items() if k.endswith(".lora_down.weight") and v.ndim >= 2})
    try:
        dim = float(metadata.get("ss_network_dim", ""))
    except ValueError:
        dim = None  # absent, "None", "Dynamic"
    per_block = {"block_dims", "conv_block_dims", "network_reg_dims"} & set(args)
    if dim is not None and dim.is_integer() and ranks and int(dim) not in ranks and not per_block:
        raise ConfigError("lora", source, f"its header says ss_network_dim={metadata['ss_network_dim']}, but no "
                          f"module's tensors have that rank (they have rank {', '.join(map(str, ranks))}); "
                          "the file is inconsistent")
    dora_wd = str(args.get("dora_wd", "")).strip().lower() in ("true", "1")
    if (str(args.get("algo", "")).strip().lower() == "dora" or dora_wd) and not any(
            k.endswith(".dora_scale") for k in raw):
        raise ConfigError("lora", source, f"its header says ss_network_args={metadata['ss_network_args']} (DoRA), "
                          "but the file holds no dora_scale tensors; the file is inconsistent")


def add_dora_magnitudes(dora: dict[str, Any], states: Mapping[str, dict[str, Any]], family: Any,
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
            down = sd.get(f"{module}.lora_A.{key.partition('.lora_B.')[2]}")
            fan_in = int(down.shape[1]) if down is not None and down.ndim >= 2 else None
            if scale.shape[0] != out or scale.numel() != out:
                if fan_in is not None and scale.shape[0] == 1 and scale.numel() == fan_in:
                    raise ConfigError("lora", source, f"its DoRA scale for {name} has shape {tuple(scale.shape)}: "
                                      "decomposed along the input axis, which peft's DoRA cannot represent; use a "
                                      "DoRA trained with the output-axis decomposition (shape (out, 1)) or a "
                                      "plain LoRA")
                layer = (out, fan_in) if fan_in is not None else (out, "?")
                raise ConfigError("lora", source, f"its tensor {name}.dora_scale has shape {tuple(scale.shape)}, "
                                  f"but its layer is {layer} (out, in): a DoRA scale has one number per output, "
                                  f"shape ({out}, 1); the file is inconsistent")
            up = sd[key]
            # peft's magnitude: (out,) for a linear layer, (1, out, 1, 1) for a convolution
            shape = (out,) if up.ndim <= 2 else (1, out) + (1,) * (up.ndim - 2)
            sd[f"{module}.lora_magnitude_vector"] = scale.reshape(shape).float()
    if dora:
        raise ConfigError("lora", source, f"its DoRA scale {next(iter(dora))}.dora_scale belongs to no LoRA module "
                          "in the file; the file is inconsistent")


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
    family = family or DEFAULT_FAMILY
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
        header["ss_network_train_unet_only"] = str(all(c == "unet" for c in states))
    header.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra_metadata or {}).items()})
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header), overwrite=overwrite)


def unet_layers_per_block(unet_config: Any) -> int:
    layers = unet_config.get("layers_per_block", 2) if hasattr(unet_config, "get") else unet_config.layers_per_block
    return int(layers[0] if isinstance(layers, (list, tuple)) else layers)
