"""The optimizer of a training run (8-bit AdamW where bitsandbytes works on a CUDA GPU, else
torch's AdamW) and its learning-rate schedule."""

from __future__ import annotations

import logging
import math
from typing import Any

from ..errors import ConfigError
from .config import LoraTrainingConfig

log = logging.getLogger(__name__)


def pick_optimizer(kind: str, groups: list[dict], config: LoraTrainingConfig, device: Any) -> tuple[Any, str]:
    import torch

    kwargs = dict(betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.adam_weight_decay,
                  eps=config.adam_epsilon)
    if kind in ("auto", "adamw8bit"):
        try:
            import bitsandbytes as bnb

            if device.type != "cuda":
                raise RuntimeError("8-bit AdamW needs a CUDA GPU")
            probe = torch.nn.Parameter(torch.zeros(64, device=device))
            probe.grad = torch.ones_like(probe)
            bnb.optim.AdamW8bit([probe]).step()  # fails here when its kernels do not load
            return bnb.optim.AdamW8bit(groups, **kwargs), "adamw8bit"
        except Exception as exc:  # any failure means bitsandbytes is not usable here
            if kind == "adamw8bit":
                raise ConfigError("optimizer", kind, f"bitsandbytes 8-bit AdamW does not work here ({exc}); "
                                  "use 'adamw' or 'auto'") from exc
            log.info("8-bit AdamW unavailable (%s); using torch AdamW", exc)
    return torch.optim.AdamW(groups, **kwargs), "adamw"


def lr_lambda(kind: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup and step < warmup and kind != "constant":
            return (step + 1) / warmup
        if kind in ("constant", "constant_with_warmup"):
            return 1.0
        progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f
