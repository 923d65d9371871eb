"""IP-Adapter: condition a Studio's pipeline on a reference image, when its weights are there."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import ModelLoadError


@contextmanager
def ip_adapter(studio: Any, weights: str, image: Any, scale: float = 0.6, *, subfolder: str = "models",
               weight_name: str = "ip-adapter_sd15.safetensors",
               image_encoder_folder: str | None = "image_encoder") -> Iterator[None]:
    """Condition every UNet call inside the block on ``image`` through an IP-Adapter.

    ``weights`` is a hub id (e.g. ``h94/IP-Adapter``) or a local folder laid out like it. The
    image embedding is computed once and handed to the UNet by a forward pre-hook, so the
    Studio's own run loop needs no change. The adapter is unloaded on exit.
    """
    import torch

    from ..models.loading import hub_offline

    pipes = [studio.pipeline(kind) for kind in ("txt2img", "controlnet")]
    try:
        pipes[0].load_ip_adapter(weights, subfolder=subfolder, weight_name=weight_name,
                                 image_encoder_folder=image_encoder_folder,
                                 local_files_only=hub_offline())
    except Exception as err:  # diffusers raises several classes for "not there"
        raise ModelLoadError(
            f"IP-Adapter weights are not available: {weights}/{subfolder}/{weight_name} (with its image encoder) "
            f"could not be loaded from a local folder, the cache or the hub ({type(err).__name__}: {err}). "
            "Download h94/IP-Adapter once, or pass ip_adapter='path/to/folder'.") from None
    pipe = pipes[0]
    for other in pipes[1:]:  # the shared UNet already has the adapter; the encoder must be known too
        other.image_encoder = pipe.image_encoder
        other.feature_extractor = pipe.feature_extractor
    pipe.set_ip_adapter_scale(scale)
    unet = studio.components["unet"]
    with torch.no_grad():
        embeds = pipe.prepare_ip_adapter_image_embeds(ip_adapter_image=image, ip_adapter_image_embeds=None,
                                                      device=unet.device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=True)

    def add_image_embeds(module: Any, args: tuple, kwargs: dict) -> tuple:
        batch = (args[0] if args else kwargs["sample"]).shape[0]
        # CFG batches hold [uncond, cond]; without CFG only the conditional half is used.
        use = [e if e.shape[0] == batch else e[-batch:] for e in embeds]
        kwargs["added_cond_kwargs"] = {**(kwargs.get("added_cond_kwargs") or {}), "image_embeds": use}
        return args, kwargs

    handle = unet.register_forward_pre_hook(add_image_embeds, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        pipe.unload_ip_adapter()
