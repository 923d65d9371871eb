"""Real-size models with random weights, built offline: `sd15-arch` and `sdxl-arch`.

Each is exactly its family's base architecture, read from the configs shipped in the package
(`ModelFamily.config_folder`): SD 1.5's UNet (860M parameters) or SDXL's (2.6B), the VAE, the
CLIP text encoder(s), an OpenPose ControlNet of the same shape, and the real CLIP tokenizers.
Their pictures are noise; they exist so that shape bugs and real speed show up on any machine
with no download. Modules are made on the `meta` device and filled from one seeded generator, so
building one skips PyTorch's slow default initialisation and the same seed gives the same weights.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from .family import ModelFamily

log = logging.getLogger(__name__)


def _fill(module: Any, generator: Any) -> Any:
    """Materialise a meta-device module on the CPU with seeded weights: norms at one and zero,
    other weights uniform with std 1/sqrt(fan-in) (so activations keep their scale; uniform is
    twice as fast to draw as normal), biases zero."""
    import torch

    module = module.to_empty(device="cpu")
    with torch.no_grad():
        for sub in module.modules():
            for name, param in sub.named_parameters(recurse=False):
                if isinstance(sub, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                    param.fill_(1.0 if name == "weight" else 0.0)
                elif name == "bias" or param.dim() < 2:
                    param.zero_()
                else:
                    bound = math.sqrt(3.0 / param[0].numel())
                    param.uniform_(-bound, bound, generator=generator)
            for name, buf in sub.named_buffers(recurse=False):
                if name == "position_ids":  # CLIP's: the only buffer these models have
                    buf.copy_(torch.arange(buf.shape[-1]).expand_as(buf))
                else:
                    raise ValueError(f"cannot fill buffer {name!r} of {type(sub).__name__}")
    return module.eval()


def build_real_architecture(family: ModelFamily, seed: int = 0, controlnet: bool = True) -> dict[str, Any]:
    """`family`'s base architecture at full size, random weights (`seed`), offline."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    import diffusers

    folder = family.config_folder()
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, Any] = dict(family.real_tokenizers())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        encoders = {}
        for _, name in family.text_parts:
            config = CLIPTextConfig.from_pretrained(folder / name)
            cls = CLIPTextModelWithProjection if config.architectures == ["CLIPTextModelWithProjection"] \
                else CLIPTextModel
            encoders[name] = cls(config)
        net = ControlNetModel.from_unet(unet) if controlnet else None
    for name, module in (("unet", unet), ("vae", vae), *encoders.items(), ("controlnet", net)):
        if module is not None:
            parts[name] = _fill(module, generator)
    sched_config = diffusers.DDIMScheduler.load_config(folder / "scheduler")
    parts["scheduler"] = getattr(diffusers, sched_config["_class_name"]).from_config(sched_config)
    log.info("built %s's architecture with random weights (seed %d)", family.label, seed)
    return parts
