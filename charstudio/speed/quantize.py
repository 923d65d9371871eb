"""Weight-only int8 for the UNet and the ControlNet (``Studio.from_pretrained(..., quantize="int8")``).

Every ``nn.Linear`` and ``nn.Conv2d`` weight is stored as int8 with one scale per output channel
(symmetric, round to nearest) and turned back into the model's dtype on the fly, each time the
layer runs. Activations, biases and norms stay as they are, so the weights take about a quarter
of their fp32 memory (half of fp16's) and pictures drift by a level or two.

Why our own and not torchao's ``Int8WeightOnlyConfig``: torchao quantizes ``nn.Linear`` only, and a
diffusers UNet is about two thirds convolution weights (mini: 66%; SD 1.5: about 45%), so
Linear-only int8 leaves mini at 0.75x of fp32; torchao's int8 tensor has no convolution. One
small mechanism for both layer types keeps LoRAs, offload and the fast path on one path: a
quantized layer stays an instance of its class (``nn.Linear`` / ``nn.Conv2d``), its ``weight`` is a
read-only property, so peft wraps it as usual and its adapters load, change weight and unload.
Merging an adapter into int8 weights (``fuse_loras``) is refused: peft would write the merged
weights into a temporary copy.
"""

from __future__ import annotations

import logging
from typing import Any

from ..recipe.speed import check_quantize

log = logging.getLogger(__name__)

QUANTIZED_PARTS = ("unet", "controlnet")  # the parts `quantize="int8"` turns into int8
_ADAPTER_PREFIX = "lora_"  # peft's adapter layers (lora_A, lora_B, ...) stay as they are


class Int8WeightMixin:
    """The int8 weight of a Linear or Conv2d: ``weight_int8`` (int8, the weight's shape) and
    ``weight_scale`` (the model's dtype, one per output channel) are buffers; ``weight`` is their
    product, computed when asked for."""

    @property
    def weight(self) -> Any:
        return self.weight_int8.to(self.weight_scale.dtype) * self.weight_scale

    @weight.setter
    def weight(self, value: Any) -> None:
        raise AttributeError("this layer's weight is int8 (charstudio.speed.quantize): it cannot be replaced; "
                             "load the model without quantize to change its weights")

    def extra_repr(self) -> str:  # shown by print(module)
        return super().extra_repr() + ", weight=int8"  # type: ignore[misc]


def _quantized_class(base: type) -> type:
    """The int8 subclass of `base` (cached: one per layer class, so isinstance checks hold)."""
    cls = _CLASSES.get(base)
    if cls is None:
        cls = type(f"Int8{base.__name__}", (Int8WeightMixin, base), {"__module__": __name__})
        _CLASSES[base] = cls
    return cls


_CLASSES: dict[type, type] = {}


def is_quantized(module: Any) -> bool:
    """True for a layer whose weight is int8, or a module holding one."""
    if isinstance(module, Int8WeightMixin):
        return True
    modules = getattr(module, "modules", None)
    return modules is not None and any(isinstance(m, Int8WeightMixin) for m in modules())


def _quantize_layer(layer: Any) -> None:
    """Turn one Linear / Conv2d into its int8 form in place (same object: hooks and peft wrappers
    that point at it keep working)."""
    import torch

    weight = layer.weight.detach()
    dims = tuple(range(1, weight.ndim))
    scale = weight.float().abs().amax(dim=dims, keepdim=True).clamp(min=1e-12) / 127.0
    quantized = torch.round(weight.float() / scale).clamp(-127, 127).to(torch.int8)
    del layer._parameters["weight"]
    layer.__class__ = _quantized_class(type(layer))
    layer.register_buffer("weight_int8", quantized)
    layer.register_buffer("weight_scale", scale.to(weight.dtype))


def quantize_model(module: Any, mode: str = "int8") -> int:
    """Quantize `module`'s Linear and Conv2d weights in place (weight-only int8, one scale per output
    channel); returns how many layers. Layers already int8 and peft's adapter layers are left alone."""
    import torch

    mode = check_quantize(mode)
    if mode is None:
        return 0
    layers = [m for name, m in module.named_modules()
              if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and not isinstance(m, Int8WeightMixin)
              and not any(part.startswith(_ADAPTER_PREFIX) for part in name.split("."))
              and m.weight is not None]
    before = weight_bytes(module)
    for layer in layers:
        _quantize_layer(layer)
    log.info("int8 weights: %d layers of %s, %.1f -> %.1f MB", len(layers), type(module).__name__,
             before / 1e6, weight_bytes(module) / 1e6)
    return len(layers)


def quantize_parts(components: dict[str, Any], mode: str | None) -> None:
    """Quantize the UNet and ControlNet among `components` (what `Studio.from_pretrained` does)."""
    if check_quantize(mode) is None:
        return
    for name in QUANTIZED_PARTS:
        if components.get(name) is not None:
            quantize_model(components[name], mode)


def weight_bytes(module: Any) -> int:
    """The memory `module`'s weights take: every parameter and buffer, each counted once."""
    seen: set[int] = set()
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def check_fusable(layers: Any) -> None:
    """Refuse merging LoRAs into int8 layers (peft would merge into a temporary copy of the weight)."""
    from ..errors import ConfigError

    if any(isinstance(layer.get_base_layer(), Int8WeightMixin) for layer in layers):
        raise ConfigError("fuse_loras", "int8 weights", "keep the LoRAs unfused (the same pictures), "
                          "or load the model without quantize to fuse them")
