"""Fused QKV projections for the fast path (`charstudio.models.speed`): one matmul for q/k/v
(self-attention) or k/v (cross-attention) instead of three, used by a layer only while no peft
adapter wraps its q/k/v, so LoRAs load, change weight, fuse and unload as usual.
"""

from __future__ import annotations

from typing import Any


# -- fused QKV projections ---------------------------------------------------------------------------
def _has_adapter(layer: Any) -> bool:
    return hasattr(layer, "base_layer")  # a peft tuner layer wraps the original Linear


class FusedQKVAttnProcessor:
    """SDPA attention that uses the layer's fused projections (`to_qkv` for self-attention,
    `to_kv` for cross-attention) when it has them and no peft adapter wraps its to_q/to_k/to_v;
    otherwise it is diffusers' `AttnProcessor2_0` (the same maths, three projections).

    The check is per call and per layer, so loading, re-weighting, fusing or unloading a LoRA
    needs no unfusing: an adapted layer takes the unfused path (which sees the adapter), and the
    fused copy of the base weights stays valid because peft only changes base weights while it
    wraps them (merging), and unmerges before it unwraps.
    """

    def __init__(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

        self.fused = FusedAttnProcessor2_0()
        self.plain = AttnProcessor2_0()

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None,
                 temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        fused_name = "to_qkv" if encoder_hidden_states is None else "to_kv"
        usable = (getattr(attn, fused_name, None) is not None
                  and not (_has_adapter(attn.to_q) or _has_adapter(attn.to_k) or _has_adapter(attn.to_v)))
        proc = self.fused if usable else self.plain
        return proc(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


def attention_layers(module: Any) -> list[Any]:
    from diffusers.models.attention_processor import Attention

    return [m for m in module.modules() if isinstance(m, Attention)]


def plain_processor_types() -> tuple[type, ...]:
    from diffusers.models.attention_processor import AttnProcessor2_0

    return (AttnProcessor2_0, FusedQKVAttnProcessor)


def sdpa_swappable(proc: Any) -> bool:
    """Processors the fast path may replace with SDPA: diffusers' defaults and xformers'."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor

    return type(proc) in (AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor)


def fuse_qkv(module: Any) -> int:
    """Give every attention layer of `module` fused q/k/v (or k/v) projections and the
    `FusedQKVAttnProcessor`; returns how many layers. Layers with another feature's processor
    (IP-Adapter, reference attention, ...) or added KV projections are left alone."""
    proc = FusedQKVAttnProcessor()
    count = 0
    for attn in attention_layers(module):
        if isinstance(attn.processor, FusedQKVAttnProcessor):
            count += 1
            continue
        if not sdpa_swappable(attn.processor) or getattr(attn, "add_k_proj", None) is not None:
            continue
        attn._charstudio_processor = attn.processor  # what set_speed("default") puts back
        attn.set_processor(proc)
        count += 1
    refresh_fused_qkv(module)
    return count


def _write_fused(attn: Any, bases: list[Any]) -> None:
    """(Re)build `to_qkv` / `to_kv` from the base q/k/v Linear layers, in place when they exist
    (same parameters: a compiled graph reads the new values without recompiling)."""
    import torch

    parts = bases if not attn.is_cross_attention else bases[1:]
    name = "to_kv" if attn.is_cross_attention else "to_qkv"
    weight = torch.cat([b.weight.detach() for b in parts])
    bias = torch.cat([b.bias.detach() for b in parts]) if attn.use_bias and parts[0].bias is not None else None
    layer = getattr(attn, name, None)
    with torch.no_grad():
        if layer is not None and layer.weight.shape == weight.shape:
            layer.weight.copy_(weight)
            if bias is not None and layer.bias is not None:
                layer.bias.copy_(bias)
            return
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                                device=weight.device, dtype=weight.dtype)
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
        layer.requires_grad_(False)
    setattr(attn, name, layer)
    attn.fused_projections = True


def refresh_fused_qkv(module: Any) -> int:
    """(Re)build the fused projections of every `FusedQKVAttnProcessor` layer from its current
    q/k/v weights (the base layers under unmerged peft adapters); a layer holding a merged
    (fused) LoRA drops its fused copy and runs unfused. Runs after LoRAs are unloaded (peft's
    unmerge leaves the base weights a rounding away from before). Returns how many layers hold
    fused projections; 0 for a module that was never fused."""
    if module is None:
        return 0
    names = ("to_q", "to_k", "to_v")
    count = 0
    for attn in attention_layers(module):
        if not isinstance(attn.processor, FusedQKVAttnProcessor) and not getattr(attn, "fused_projections", False):
            continue
        layers = [getattr(attn, n) for n in names]
        if any(getattr(layer, "merged", False) for layer in layers):
            for name in ("to_qkv", "to_kv"):
                if getattr(attn, name, None) is not None:
                    delattr(attn, name)
            attn.fused_projections = False
            continue
        _write_fused(attn, [getattr(layer, "base_layer", layer) for layer in layers])
        count += 1
    return count


def unfuse_qkv(module: Any) -> int:
    """Undo `fuse_qkv`: the layers' own processors back, the fused projections gone."""
    count = 0
    for attn in attention_layers(module):
        if isinstance(attn.processor, FusedQKVAttnProcessor):
            attn.set_processor(getattr(attn, "_charstudio_processor", None) or attn.processor.plain)
        if hasattr(attn, "_charstudio_processor"):
            del attn._charstudio_processor
        for name in ("to_qkv", "to_kv"):
            if getattr(attn, name, None) is not None:
                delattr(attn, name)
                count += 1
        attn.fused_projections = False
    return count
