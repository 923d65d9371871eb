"""Latent maths of a traced step: noise levels, predicted x0 for every scheduler, decoding."""

from __future__ import annotations

import logging
import math
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)

DECODERS = ("approx", "auto")
_PREVIEW_VAES: dict[str, Any] = {}  # hub id -> AutoencoderTiny, or None when it is not available


def preview_vae(family: Any) -> Any:
    """The family's tiny autoencoder (TAESD / TAESDXL) from the local cache, or None when it is
    not there (offline, never downloaded): previews then use the linear map."""
    hub_id = family.preview_vae
    if hub_id not in _PREVIEW_VAES:
        from diffusers import AutoencoderTiny

        try:
            _PREVIEW_VAES[hub_id] = AutoencoderTiny.from_pretrained(hub_id, local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            log.info("%s is not in the local cache (%s): previews use %s's linear latent-to-RGB map", hub_id,
                     str(exc).splitlines()[0] if str(exc) else type(exc).__name__, family.label)
            _PREVIEW_VAES[hub_id] = None
    return _PREVIEW_VAES[hub_id]


def decode_latents(latents: Any, decoder: Any, family: Any = None) -> list[Any]:
    """Decode UNet-space latents (B, C, h, w) to PIL images.

    `decoder` is an AutoencoderKL (full VAE), an AutoencoderTiny (TAESD: cheap previews),
    "approx" (the family's linear latent-to-RGB map: free, blurry, 1/8 size) or "auto" (the
    family's TAESD/TAESDXL when it is in the local cache, else "approx"). `family` (a
    ModelFamily; default SD 1.x) says whose latents these are.
    """
    import numpy as np
    import torch
    from PIL import Image

    if isinstance(decoder, str):
        from ..models.family import SD1

        family = family or SD1
        if decoder not in DECODERS:
            raise ConfigError("decoder", decoder, "a VAE, an AutoencoderTiny, 'approx' or 'auto'")
        tiny = preview_vae(family) if decoder == "auto" else None
        if tiny is None:
            return _approx_rgb(latents, family)
        decoder = tiny.to(latents.device)
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


def _approx_rgb(latents: Any, family: Any) -> list[Any]:
    import numpy as np
    import torch
    from PIL import Image

    z = latents.detach().float().cpu()
    if z.shape[1] == len(family.latent_rgb):
        rgb = torch.einsum("bchw,cr->brhw", z, torch.tensor(family.latent_rgb)) + \
            torch.tensor(family.latent_rgb_bias)[None, :, None, None]
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
