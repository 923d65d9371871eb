"""Picking the device and dtype, and the attention implementation."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16"}


def pick_device(device: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    """Choose (torch.device, torch.dtype): CUDA fp16 (bf16 if asked), MPS fp16, else CPU fp32."""
    import torch

    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError("device", device, "use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", device, "CUDA is not available on this machine; use 'cpu'")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device", device, "MPS is not available on this machine; use 'cpu'")

    if dtype is None:
        dtype_t = torch.float16 if dev.type in ("cuda", "mps") else torch.float32
    else:
        key = str(dtype).lower().replace("torch.", "")
        if key not in DTYPES:
            raise ConfigError("dtype", dtype, "use 'fp32', 'fp16' or 'bf16'")
        dtype_t = getattr(torch, DTYPES[key])
        if dev.type == "cpu" and dtype_t == torch.float16:
            # Half precision convolutions on CPU are very slow or missing; say so instead of crawling.
            raise ConfigError("dtype", dtype, "fp16 is not supported on CPU; use 'fp32' (or 'bf16')")
    return dev, dtype_t


def xformers_works() -> bool:
    """True when xformers imports *and* its attention kernel runs here (it often doesn't)."""
    try:
        import torch
        import xformers.ops  # noqa: F401

        if not torch.cuda.is_available():
            return False
        q = torch.zeros(1, 4, 1, 8, device="cuda", dtype=torch.float16)
        xformers.ops.memory_efficient_attention(q, q, q)
        return True
    except Exception as exc:  # any failure means "don't use it"
        log.debug("xformers unavailable: %s", exc)
        return False


def configure_attention(pipe_or_unet: Any, attention: str = "auto") -> str:
    """Use PyTorch SDPA, or xformers when asked for (or 'auto') and it actually works."""
    if attention not in ("auto", "sdpa", "xformers"):
        raise ConfigError("attention", attention, "use 'auto', 'sdpa' or 'xformers'")
    if attention in ("auto", "xformers") and xformers_works():
        pipe_or_unet.enable_xformers_memory_efficient_attention()
        return "xformers"
    if attention == "xformers":
        raise ConfigError("attention", attention, "xformers does not import or run here; use 'sdpa' or 'auto'")
    # diffusers uses SDPA (AttnProcessor2_0) by default on torch 2.x; nothing to change.
    return "sdpa"


# An OpenPose ControlNet is about half its UNet (SD 1.5: 361M of 860M parameters; SDXL, xinsir's:
# 1.25B of 2.57B); it loads on first use, so the estimate counts it before it is there.
CONTROLNET_SHARE = 0.5
ACTIVATION_ALLOWANCE = 2**30  # UNet activations with SDPA at the native size, batch 2 (CFG), fp16
LOW_VRAM_SHARE = 0.85  # keep this much of the card for charstudio; the rest is CUDA's own and other work


def estimated_gpu_bytes(components: dict[str, Any], native: int) -> int:
    """GPU memory for a picture at the native size with every part on the GPU: the weights (the
    ControlNet counted even before it loads, quantized as the UNet is), the VAE decode at full
    size, UNet activations. int8 weights count at their real size (their buffers and scales)."""
    import torch

    from ..limits import decode_bytes
    from ..speed.quantize import weight_bytes

    def size(module: Any) -> int:
        return weight_bytes(module) if isinstance(module, torch.nn.Module) else 0

    weights = sum(size(m) for m in components.values())
    if components.get("controlnet") is None and components.get("unet") is not None:
        weights += int(CONTROLNET_SHARE * size(components["unet"]))
    unet = components.get("unet")
    itemsize = torch.empty(0, dtype=unet.dtype).element_size() if unet is not None else 4  # not int8's 1
    return weights + decode_bytes(native, native, itemsize=itemsize) + ACTIVATION_ALLOWANCE


def choose_low_vram(requested: bool | None, device: Any, components: dict[str, Any], native: int) -> bool:
    """Whether to keep parts in CPU memory and move each to the GPU only while it runs (model CPU
    offload) and decode in tiles. `requested` True/False decides; None (auto) chooses it on a CUDA
    device with less memory than `estimated_gpu_bytes` needs (e.g. SDXL on a 12 GB card)."""
    if requested is not None:
        return bool(requested)
    if getattr(device, "type", str(device)) != "cuda":
        return False
    import torch

    total = torch.cuda.get_device_properties(device).total_memory
    need = estimated_gpu_bytes(components, native)
    if need > LOW_VRAM_SHARE * total:
        log.info("low-VRAM mode: about %.1f GiB needed on a %.1f GiB GPU", need / 2**30, total / 2**30)
        return True
    return False
