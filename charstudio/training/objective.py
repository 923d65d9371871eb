"""What a training step's loss compares: the target the model's scheduler says the UNet
predicts (noise or velocity), and min-SNR-gamma weights for either kind."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

PREDICTION_TYPES = ("epsilon", "v_prediction")


def check_prediction_type(scheduler: Any, model: str) -> str:
    """The model's ``prediction_type`` (from its scheduler config), refused unless training supports it."""
    kind = str(scheduler.config.get("prediction_type") or "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ConfigError("model", model, f"its scheduler predicts {kind!r}; LoRA training supports "
                          "'epsilon' and 'v_prediction' models")
    return kind


def loss_target(scheduler: Any, latents: Any, noise: Any, timesteps: Any) -> Any:
    """What the UNet learns to predict for ``latents`` noised with ``noise`` at ``timesteps``: the
    noise itself (epsilon models) or the velocity alpha_t * noise - sigma_t * latents
    (v-prediction models, such as NoobAI v-pred), as ``scheduler.config.prediction_type`` says."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ConfigError("prediction_type", kind, "LoRA training supports 'epsilon' and 'v_prediction' models")


def min_snr_weights(scheduler: Any, timesteps: Any, gamma: float) -> Any:
    """Per-sample loss weights of Min-SNR-gamma (Hang et al. 2023), in diffusers' examples' form:
    min(SNR, gamma) / SNR for noise targets, min(SNR, gamma) / (SNR + 1) for velocity targets.

    With a zero-terminal-SNR schedule the last timestep has SNR 0; its epsilon weight is the
    limit, 1, rather than 0/0.
    """
    import torch
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    if scheduler.config.prediction_type == "epsilon":
        return torch.where(snr > 0, clipped / snr, torch.ones_like(snr))
    return clipped / (snr + 1)
