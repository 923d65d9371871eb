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
