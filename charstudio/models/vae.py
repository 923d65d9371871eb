"""The VAE's geometry and codec: how many pixels one latent spans, the model's native size, and
pictures <-> latents. The one place these formulas are written (the workflows, training, mini and
interpolation all ask here)."""

from __future__ import annotations

import warnings
from typing import Any


def vae_factor(vae: Any) -> int:
    """How many pixels one latent spans per side (8 for SD 1.5's VAE, 4 for mini's)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def native_size(components: dict[str, Any]) -> int:
    """The resolution the UNet was trained at: its latent size times the VAE's factor (512 for SD 1.5)."""
    return int(components["unet"].config.sample_size) * vae_factor(components["vae"])


def size_divisor(vae: Any, unet: Any) -> int:
    """Pixel sizes must be multiples of this: the VAE's factor times the UNet's downsampling."""
    return vae_factor(vae) * 2 ** (len(unet.config.down_block_types) - 1)


def encode(vae: Any, image_processor: Any, images: Any) -> Any:
    """PIL image(s) -> latents scaled as the UNet sees them (the VAE's mean); `decode` inverts it."""
    import torch

    pixels = image_processor.preprocess(images).to(vae.device, vae.dtype)
    with torch.no_grad():
        return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor


def decode(vae: Any, image_processor: Any, latents: Any) -> list[Any]:
    """Latents -> PIL images. NaNs (fp16 overflow) trigger an fp32 retry and a warning."""
    import torch

    with torch.no_grad():
        pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        if not torch.isfinite(pixels).all() and vae.dtype != torch.float32:
            warnings.warn(f"the VAE produced NaNs in {vae.dtype}; upcasting it to float32 for this model",
                          RuntimeWarning, stacklevel=4)
            vae.to(torch.float32)
            pixels = vae.decode(latents.to(torch.float32) / vae.config.scaling_factor, return_dict=False)[0]
        if not torch.isfinite(pixels).all():
            warnings.warn("the image contains NaNs and will be black: try fp32 (dtype='fp32'), fewer steps "
                          "with another scheduler, or a lower guidance_scale", RuntimeWarning, stacklevel=4)
            pixels = torch.nan_to_num(pixels, nan=-1.0)
    images = image_processor.postprocess(pixels.float(), output_type="pil")
    for im in images:
        if im.getextrema() == ((0, 0), (0, 0), (0, 0)):
            warnings.warn("generated an all-black image", RuntimeWarning, stacklevel=4)
    return images
