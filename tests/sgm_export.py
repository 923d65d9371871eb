"""Test helper: write an SDXL diffusers model as one A1111/civitai-style SGM checkpoint.

SDXL single files (Stability's `generative-models` layout, what A1111, ComfyUI and civitai use) are:

    model.diffusion_model.*                          the UNet (input_blocks / middle_block / output_blocks,
                                                     label_emb.0.{0,2} for the size/crop embedding)
    first_stage_model.*                              the VAE (the same layout as SD 1.x's)
    conditioner.embedders.0.transformer.text_model.* CLIP ViT-L (Hugging Face CLIPTextModel keys)
    conditioner.embedders.1.model.*                  OpenCLIP bigG in OpenCLIP's own layout
                                                     (transformer.resblocks.N.attn.in_proj_weight packing
                                                     q/k/v, ln_1/ln_2, mlp.c_fc/c_proj, token_embedding,
                                                     positional_embedding, ln_final, text_projection
                                                     stored transposed)

`export_sgm_state_dict` is written as the inverse of diffusers' `convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint` and `convert_open_clip_checkpoint`
(prefix ``conditioner.embedders.1.model.``), so a model exported here and loaded with
`from_single_file` must come back with bit-identical weights. The UNet's layout is derived from
its config (levels, resnets per level, which levels have attention, transformer depth), not from
SDXL's numbers. Like tests/ldm_export.py it raises on any key it cannot place.

diffusers' single-file code recognises the SDXL text encoders as follows (diffusers 0.42,
`create_diffusers_clip_model_from_ldm`): a CLIPTextModel* is read from ``conditioner.embedders.0``
when that encoder's ``position_embedding.weight`` is as wide as the model being built, else from
``conditioner.embedders.1.model`` when ``positional_embedding`` is; the ViT-L branch is tried first.
Its model-type guess without ``config=`` (`infer_diffusers_model_type`) says "xl_base" only when
``conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias`` exists (ten or more
OpenCLIP layers). The q/k/v split of ``in_proj_weight`` uses ``text_projection.shape[0]``, the
encoder's width.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ldm_export import (CLIP_PREFIX, UNET_PREFIX, UNET_TOP, VAE_PREFIX, UnmappedKeyError, _unet_resnet, clip_to_ldm,
                        merge_parts, vae_to_ldm)

CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

# Transformer2DModel (diffusers) and SpatialTransformer (SGM) name their parts alike, so the
# converter copies attention keys unchanged; these are the names it may carry.
_ATTENTION_KEY = re.compile(
    r"(?:(?:norm|proj_in|proj_out)"
    r"|transformer_blocks\.\d+\.(?:attn[12]\.(?:to_q|to_k|to_v|to_out\.0)|ff\.net\.(?:0\.proj|2)|norm[123]))"
    r"\.(?:weight|bias)")
# Hugging Face CLIP encoder layer -> OpenCLIP residual block (the converter's replacements, reversed).
_OPEN_CLIP_LAYER_PARTS = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_OPEN_CLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}


def _layers_per_block(config: Any) -> int:
    """The converter numbers SGM blocks with one `layers_per_block` for every level."""
    layers = config["layers_per_block"]
    if isinstance(layers, (list, tuple)):
        if len(set(layers)) != 1:
            raise ValueError(f"layers_per_block={layers}: diffusers' converter assumes one count for every level")
        layers = layers[0]
    return int(layers)


def _attention(rest: str, key: str) -> str:
    if not _ATTENTION_KEY.fullmatch(rest):
        raise UnmappedKeyError(key)
    return rest


def unet_to_sgm(state_dict: dict[str, Any], config: Any) -> dict[str, Any]:
    """UNet2DConditionModel state dict (SDXL or SD 1.x block layout) -> `model.diffusion_model.*` keys."""
    layers = _layers_per_block(config)
    n_down, n_up = len(config["down_block_types"]), len(config["up_block_types"])
    if config.get("class_embed_type") or config.get("num_class_embeds") or config.get("encoder_hid_dim_type"):
        raise ValueError("class embeddings and encoder_hid_proj are not part of SDXL; this exporter does not handle them")
    if config.get("addition_embed_type") not in (None, "text_time"):
        raise ValueError(f"addition_embed_type={config['addition_embed_type']!r}: only SDXL's 'text_time' is handled")
    top = dict(UNET_TOP)
    if config.get("addition_embed_type") == "text_time":  # the pooled text + size/crop ids embedding
        top.update({"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"})
    # Up levels whose SGM blocks hold [resnet, attention(, upsampler)] rather than [resnet(, upsampler)].
    attended_up = {int(m[1]) for k in state_dict if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        if module in top and param in ("weight", "bias"):
            sgm = f"{top[module]}.{param}"
        else:
            sgm = (_sgm_down(key, n_down, layers) or _sgm_mid(key) or _sgm_up(key, n_up, layers, attended_up))
        if sgm is None:
            raise UnmappedKeyError(key)
        out[UNET_PREFIX + sgm] = value
    return out


def _sgm_down(key: str, n_down: int, layers: int) -> str | None:
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if block >= n_down or j >= layers:
            raise UnmappedKeyError(key)
        # SGM numbers input blocks flat: conv_in is 0, then (layers + 1) per level, the last
        # of which is the downsampler (absent on the deepest level).
        idx = 1 + block * (layers + 1) + j
        return f"input_blocks.{idx}.0.{_unet_resnet(rest)}" if kind == "resnets" \
            else f"input_blocks.{idx}.1.{_attention(rest, key)}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key):
        block = int(m[1])
        if block >= n_down - 1:
            raise UnmappedKeyError(key)
        return f"input_blocks.{1 + block * (layers + 1) + layers}.0.op.{m[2]}"
    return None


def _sgm_mid(key: str) -> str | None:
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        if int(m[1]) > 1:
            raise UnmappedKeyError(key)
        return f"middle_block.{2 * int(m[1])}.{_unet_resnet(m[2])}"  # [resnet, attention, resnet]
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{_attention(m[1], key)}"
    return None


def _sgm_up(key: str, n_up: int, layers: int, attended_up: set[int]) -> str | None:
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if block >= n_up or j > layers:
            raise UnmappedKeyError(key)
        idx = block * (layers + 1) + j  # up levels have layers + 1 resnets each
        return f"output_blocks.{idx}.0.{_unet_resnet(rest)}" if kind == "resnets" \
            else f"output_blocks.{idx}.1.{_attention(rest, key)}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key):
        block = int(m[1])
        if block >= n_up - 1:
            raise UnmappedKeyError(key)
        # The upsampler follows the level's last resnet (and its attention, where it has one).
        return f"output_blocks.{block * (layers + 1) + layers}.{2 if block in attended_up else 1}.conv.{m[2]}"
    return None


def clip_l_to_sgm(state_dict: dict[str, Any], *, position_ids: bool = True) -> dict[str, Any]:
    """CLIPTextModel (ViT-L's role) -> `conditioner.embedders.0.transformer.text_model.*` keys."""
    if any(k.startswith("text_projection") for k in state_dict):
        raise UnmappedKeyError("text_projection.weight (SDXL's first encoder has no projection)")
    return {CLIP_L_PREFIX + k[len(CLIP_PREFIX):]: v for k, v in clip_to_ldm(state_dict, position_ids=position_ids).items()}


def open_clip_to_sgm(state_dict: dict[str, Any]) -> dict[str, Any]:
    """CLIPTextModelWithProjection (OpenCLIP bigG's role) -> `conditioner.embedders.1.model.*` keys
    in OpenCLIP's layout: q/k/v packed into one `in_proj`, the projection stored transposed."""
    import torch

    state = {k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v
             for k, v in state_dict.items()}
    out: dict[str, Any] = {}
    packed: dict[tuple[int, str], dict[str, Any]] = {}  # (layer, weight|bias) -> {q, k, v}
    for key, value in state.items():
        if key in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[key]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T  # OpenCLIP multiplies x @ text_projection
        elif key == "text_model.embeddings.position_ids":
            continue  # a transformers buffer (older versions save it); OpenCLIP has none
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            packed.setdefault((int(m[1]), m[3]), {})[m[2]] = value
        elif (m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)) \
                and m[2] in _OPEN_CLIP_LAYER_PARTS:
            out[f"transformer.resblocks.{m[1]}.{_OPEN_CLIP_LAYER_PARTS[m[2]]}.{m[3]}"] = value
        else:
            raise UnmappedKeyError(key)
    if "text_projection" not in out:
        # without it diffusers splits in_proj by LDM_OPEN_CLIP_TEXT_PROJECTION_DIM or the config's width
        raise UnmappedKeyError("text_projection.weight is missing: not a CLIPTextModelWithProjection")
    width = out["text_projection"].shape[0]  # what the converter splits in_proj by
    for (layer, param), qkv in packed.items():
        if sorted(qkv) != ["k", "q", "v"] or any(t.shape[0] != width for t in qkv.values()):
            raise UnmappedKeyError(f"text_model.encoder.layers.{layer}.self_attn: q/k/v {param} of width {width}")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return {OPEN_CLIP_PREFIX + k: v for k, v in out.items()}


def export_sgm_state_dict(components: dict[str, Any], dtype: Any = None) -> dict[str, Any]:
    """One SGM-layout state dict from SDXL diffusers components (unet, vae, text_encoder,
    text_encoder_2); `dtype` casts floating-point tensors (e.g. torch.float16, as files ship)."""
    unet, vae = components["unet"], components["vae"]
    parts = [
        unet_to_sgm(unet.state_dict(), unet.config),
        vae_to_ldm(vae.state_dict(), vae.config),
        clip_l_to_sgm(components["text_encoder"].state_dict()),
        open_clip_to_sgm(components["text_encoder_2"].state_dict()),
    ]
    out = merge_parts(parts, "SGM")
    assert all(k.startswith((UNET_PREFIX, VAE_PREFIX, CLIP_L_PREFIX, OPEN_CLIP_PREFIX)) for k in out)

    def finish(t: Any) -> Any:
        t = t.detach()
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            return t.to(dtype).contiguous()  # a new tensor already
        return t.contiguous().clone()

    return {key: finish(value) for key, value in out.items()}


def save_sgm_checkpoint(components: dict[str, Any], path: str | Path, dtype: Any = None) -> Path:
    """Write the components as one `.safetensors` file in the SGM layout."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(export_sgm_state_dict(components, dtype), str(path), metadata={"format": "pt"})
    return path
