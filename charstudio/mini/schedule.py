"""The `mini` recipe's schedules: the learning rate (warm-up, then cosine to a tenth), the noise
schedule's SNR shift for a larger stage, and the UNet loss's weight by signal-to-noise ratio.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .train import MiniRecipe

log = logging.getLogger(__name__)


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def loss_weight(snr: Any, gamma: float) -> Any:
    """Per-sample weight of the v-prediction loss: the picture's (x0) error counts min(SNR, gamma) + 1.

    Min-SNR alone (x0 weight min(SNR, gamma)) makes the noisiest steps, where the prompt decides
    the colours, count ~0.01; the +1 floor lets them count as much as any picture error, and the
    cap keeps the nearly clean steps from drowning the rest. For v, x0 error = v error / (SNR + 1).
    """
    return (snr.clamp(max=gamma) + 1) / (snr + 1)


def shifted_betas(alphas_cumprod: Any, shift: float) -> list[float]:
    """Betas whose cumulative alphas have ``1/shift`` times the SNR of ``alphas_cumprod`` at every step."""
    import torch

    if not shift > 0:
        from ..errors import ConfigError

        raise ConfigError("snr_shift", shift, "a positive number (1 keeps the schedule; 4 for twice the size)")
    ab = alphas_cumprod.double()
    shifted = ab / (ab + shift * (1 - ab))
    previous = torch.cat([torch.ones(1, dtype=shifted.dtype), shifted[:-1]])
    return (1 - shifted / previous).tolist()


def apply_snr_shift(recipe: MiniRecipe, comps: dict) -> None:
    if recipe.snr_shift == 1.0:
        return
    sched = comps["scheduler"]
    betas = shifted_betas(sched.alphas_cumprod, recipe.snr_shift)
    comps["scheduler"] = type(sched).from_config(sched.config, trained_betas=betas)
    log.info("noise schedule: SNR divided by %g (terminal SNR %.2e)", recipe.snr_shift,
             float(comps["scheduler"].alphas_cumprod[-1] / (1 - comps["scheduler"].alphas_cumprod[-1])))
