"""Latent maths of a traced step: noise levels, predicted x0 for every scheduler, decoding."""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError

# Linear map from SD 1.x latent channels to RGB (the widely used "approx cheap" preview
# factors), good enough to see composition forming at no cost.
_SD15_LATENT_RGB = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


def decode_latents(latents: Any, decoder: Any) -> list[Any]:
    """Decode UNet-space latents (B, C, h, w) to PIL images.

    `decoder` is an AutoencoderKL (full VAE), an AutoencoderTiny (TAESD: cheap previews), or
    "approx" (a linear latent-to-RGB map: free, blurry, 1/8 size).
    """
    import numpy as np
    import torch
    from PIL import Image

    if isinstance(decoder, str):
        if decoder != "approx":
            raise ConfigError("decoder", decoder, "a VAE, an AutoencoderTiny, or 'approx'")
        return _approx_rgb(latents)
    param = next(decoder.parameters())
    cfg = decoder.config
    z = latents.to(param.device, param.dtype) / getattr(cfg, "scaling_factor", 1.0)
    shift = getattr(cfg, "shift_factor", None)
    if shift:
        z = z + shift
    with torch.no_grad():
        img = decoder.decode(z).sample
    arr = ((img.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


def _approx_rgb(latents: Any) -> list[Any]:
    import numpy as np
    import torch
    from PIL import Image

    z = latents.detach().float().cpu()
    if z.shape[1] == 4:
        rgb = torch.einsum("bchw,cr->brhw", z, torch.tensor(_SD15_LATENT_RGB))
    else:  # unknown latent space: show the first three channels, each normalised
        rgb = z[:, :3]
        rgb = (rgb - rgb.mean(dim=(2, 3), keepdim=True)) / rgb.std(dim=(2, 3), keepdim=True).clamp_min(1e-6) * 0.5
    arr = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


def step_noise_level(scheduler: Any, timestep: Any, index: int | None) -> tuple[float | None, float | None]:
    """(sigma, alpha_bar) of the step at `index` (or at `timestep` without sigmas)."""
    import torch

    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and index is not None and 0 <= index < len(sigmas):
        s = float(sigmas[index])
        return s, 1.0 / (1.0 + s * s)
    ac = getattr(scheduler, "alphas_cumprod", None)
    if ac is not None:
        t = int(timestep.item() if torch.is_tensor(timestep) else timestep)
        t = min(max(t, 0), len(ac) - 1)
        ab = float(ac[t])
        return math.sqrt((1.0 - ab) / ab), ab
    return None, None


def is_variance_exploding(scheduler: Any) -> bool:
    """Euler-family schedulers keep x = x0 + sigma*eps (unscaled) and scale only the UNet input."""
    return getattr(scheduler, "sigmas", None) is not None and not hasattr(scheduler, "_sigma_to_alpha_sigma_t") \
        and float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0


def predicted_x0(scheduler: Any, model_output: Any, sample: Any, sigma: float | None,
                 alpha_bar: float | None) -> Any | None:
    """x0 from one step's input sample and model output, for schedulers that do not return it."""
    if sigma is None or alpha_bar is None:
        return None
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    if is_variance_exploding(scheduler):
        if kind == "epsilon":
            return sample - sigma * model_output
        if kind == "v_prediction":
            return model_output * (-sigma / math.sqrt(sigma ** 2 + 1)) + sample / (sigma ** 2 + 1)
        return model_output
    alpha_t, sigma_t = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if kind == "epsilon":
        return (sample - sigma_t * model_output) / alpha_t
    if kind == "v_prediction":
        return alpha_t * sample - sigma_t * model_output
    return model_output
