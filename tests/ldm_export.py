"""Test helper: write an SD 1.x diffusers model as one A1111/civitai-style LDM checkpoint.

Real single-file checkpoints use the original CompVis/LDM key layout:

    model.diffusion_model.*             the UNet (input_blocks / middle_block / output_blocks)
    first_stage_model.*                 the VAE (encoder.down.N.block.M / decoder.up.N ...)
    cond_stage_model.transformer.*      the CLIP text encoder (HF CLIPTextModel keys under text_model.)

`export_ldm_state_dict` maps diffusers' module names back to that layout. It is written as the
inverse of diffusers' `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint` and
`convert_ldm_clip_checkpoint` for the SD 1.x block structure (a UNet of CrossAttnDown/Down and
Up/CrossAttnUp blocks, a VAE of DownEncoder/UpDecoder blocks with one mid attention, a CLIP
text encoder), so that a model exported here and loaded with `from_single_file` must come back
with bit-identical weights. It raises on any key it does not know how to place, so a model with
a different structure fails loudly instead of exporting a partial checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# Resnet sub-layers: diffusers name -> LDM ResBlock name (UNet).
_UNET_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
# VAE attention sub-layers: diffusers (linear) name -> LDM AttnBlock (1x1 conv) name.
_VAE_ATTN_PARTS = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


# The UNet's modules outside its blocks: diffusers name -> LDM / SGM name (the same in both layouts).
UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


class UnmappedKeyError(KeyError):
    """A diffusers key this exporter has no LDM name for."""


def _unet_resnet(rest: str) -> str:
    part, _, param = rest.rpartition(".")
    if part not in _UNET_RESNET_PARTS:
        raise UnmappedKeyError(rest)
    return f"{_UNET_RESNET_PARTS[part]}.{param}"


def unet_to_ldm(state_dict: dict[str, Any], config: Any) -> dict[str, Any]:
    """UNet2DConditionModel state dict -> `model.diffusion_model.*` keys."""
    layers = config["layers_per_block"]
    n_down = len(config["down_block_types"])
    n_up = len(config["up_block_types"])
    if config.get("class_embed_type") or config.get("addition_embed_type") or config.get("num_class_embeds"):
        raise ValueError("class / addition embeddings are not part of SD 1.x; this exporter does not handle them")
    top = dict(UNET_TOP)
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        if module in top:
            ldm = f"{top[module]}.{param}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            # LDM numbers input blocks flat: conv_in is 0, then (layers + 1) per level,
            # the last of which is the downsampler (absent on the deepest level).
            idx = 1 + block * (layers + 1) + j
            ldm = f"input_blocks.{idx}.0.{_unet_resnet(rest)}" if kind == "resnets" else f"input_blocks.{idx}.1.{rest}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            block = int(m[1])
            if block == n_down - 1:
                raise UnmappedKeyError(key)
            ldm = f"input_blocks.{1 + block * (layers + 1) + layers}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            # middle_block is [resnet, attention, resnet].
            ldm = f"middle_block.{2 * int(m[1])}.{_unet_resnet(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            ldm = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            idx = block * (layers + 1) + j  # up levels have layers + 1 resnets each
            ldm = f"output_blocks.{idx}.0.{_unet_resnet(rest)}" if kind == "resnets" else f"output_blocks.{idx}.1.{rest}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            block = int(m[1])
            if block == n_up - 1:
                raise UnmappedKeyError(key)
            # The upsampler sits after the last resnet (and its attention, if the level has one).
            has_attention = "CrossAttn" in config["up_block_types"][block]
            ldm = f"output_blocks.{block * (layers + 1) + layers}.{2 if has_attention else 1}.conv.{m[2]}"
        else:
            raise UnmappedKeyError(key)
        out[UNET_PREFIX + ldm] = value
    return out


def vae_to_ldm(state_dict: dict[str, Any], config: Any) -> dict[str, Any]:
    """AutoencoderKL state dict -> `first_stage_model.*` keys (attention weights as 1x1 convs)."""
    n_up = len(config["up_block_types"])
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key.startswith(("quant_conv.", "post_quant_conv.")) or re.fullmatch(r"(en|de)coder\.conv_(in|out)\.\w+", key):
            ldm = key
        elif m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(\w+)", key):
            ldm = f"{m[1]}.norm_out.{m[2]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(\w+)", key):
            ldm = f"encoder.down.{m[1]}.block.{m[2]}.{'nin_shortcut' if m[3] == 'conv_shortcut' else m[3]}.{m[4]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            ldm = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(\w+)", key):
            # LDM numbers decoder levels from the lowest resolution up; diffusers the other way.
            level = n_up - 1 - int(m[1])
            ldm = f"decoder.up.{level}.block.{m[2]}.{'nin_shortcut' if m[3] == 'conv_shortcut' else m[3]}.{m[4]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            ldm = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(\w+)\.(\w+)", key):
            ldm = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}.{m[4]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            if m[2] not in _VAE_ATTN_PARTS:
                raise UnmappedKeyError(key)
            ldm = f"{m[1]}.mid.attn_1.{_VAE_ATTN_PARTS[m[2]]}.{m[3]}"
            if m[3] == "weight" and m[2] != "group_norm":
                value = value[:, :, None, None]  # LDM's AttnBlock uses 1x1 convolutions
        else:
            raise UnmappedKeyError(key)
        out[VAE_PREFIX + ldm] = value
    return out


def clip_to_ldm(state_dict: dict[str, Any], *, position_ids: bool = True) -> dict[str, Any]:
    """CLIPTextModel state dict -> `cond_stage_model.transformer.text_model.*` keys.

    transformers >= 5.6 dropped the `text_model.` level from CLIPTextModel; the original
    checkpoints (written by transformers 4) have it, so it is put back. A1111 files also carry
    the `position_ids` buffer; `position_ids=True` writes it too, as a real file would.
    """
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        inner = key if key.startswith("text_model.") else f"text_model.{key}"
        out[CLIP_PREFIX + inner] = value
    pos_key = CLIP_PREFIX + "text_model.embeddings.position_embedding.weight"
    if position_ids and pos_key in out:
        import torch

        n = out[pos_key].shape[0]
        out[CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(n, dtype=torch.int64)[None]
    return out


def schedule_buffers(scheduler_config: Any) -> dict[str, Any]:
    """The DDPM schedule buffers an LDM checkpoint carries at its top level (ignored by loaders)."""
    import torch

    n = scheduler_config["num_train_timesteps"]
    betas = torch.linspace(scheduler_config["beta_start"] ** 0.5, scheduler_config["beta_end"] ** 0.5, n,
                           dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return {name: t.float() for name, t in (("betas", betas), ("alphas_cumprod", alphas_cumprod),
                                             ("alphas_cumprod_prev", prev))}


def export_ldm_state_dict(components: dict[str, Any]) -> dict[str, Any]:
    """One LDM-layout state dict from diffusers components (unet, vae, text_encoder, scheduler)."""
    unet, vae, text_encoder = components["unet"], components["vae"], components["text_encoder"]
    parts = [
        unet_to_ldm(unet.state_dict(), unet.config),
        vae_to_ldm(vae.state_dict(), vae.config),
        clip_to_ldm(text_encoder.state_dict()),
    ]
    if components.get("scheduler") is not None:
        parts.append(schedule_buffers(components["scheduler"].config))
    return {k: v.detach().contiguous().clone() for k, v in merge_parts(parts, "LDM").items()}


def merge_parts(parts: list[dict[str, Any]], layout: str) -> dict[str, Any]:
    """The exported parts as one state dict; a key in two parts, or a lost key, is an error."""
    out: dict[str, Any] = {}
    for part in parts:
        clash = out.keys() & part.keys()
        if clash:
            raise ValueError(f"duplicate {layout} keys: {sorted(clash)[:3]}")
        out.update(part)
    if len(out) != sum(len(p) for p in parts):
        raise AssertionError("keys were lost while exporting")
    return out


def save_ldm_checkpoint(components: dict[str, Any], path: str | Path) -> Path:
    """Write the components as one `.safetensors` file in the LDM layout."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(export_ldm_state_dict(components), str(path), metadata={"format": "pt"})
    return path
