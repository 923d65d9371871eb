"""A live preview: a step callback that shows the predicted picture while a run goes on."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

from ..errors import ConfigError
from ..models.family import detect_family
from .latents import decode_latents, is_variance_exploding

log = logging.getLogger(__name__)


class LivePreview:
    """Step callback: every `every` steps, decode a small preview and hand it to `on_preview`.

    `on_preview(step_index, image)` gets a PIL image of the current latents. `decoder` is
    "auto" (the model family's TAESD / TAESDXL when cached, else "approx"), "approx" (the
    family's linear latent-to-RGB map: free, 1/8 size), an AutoencoderTiny (cheap, full size) or
    the VAE (exact, slow). The family (SD 1.x or SDXL latents) is read from the running pipeline.
    """

    tensor_inputs = ("latents",)

    def __init__(self, on_preview: Callable[[int, Any], None], every: int = 5, decoder: Any = "auto"):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError("every", every, "a whole number of steps >= 1")
        self.on_preview = on_preview
        self.every = every
        self.decoder = decoder

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        if (step_index + 1) % self.every:
            return {}
        latents = callback_kwargs["latents"][:1]
        sched = pipe.scheduler
        if is_variance_exploding(sched):
            idx = getattr(sched, "step_index", None)
            if idx is not None and idx < len(sched.sigmas):
                latents = latents / math.sqrt(float(sched.sigmas[idx]) ** 2 + 1.0)  # back to unit scale
        try:
            image = decode_latents(latents, self.decoder, detect_family(pipe.components))[0]
        except Exception as exc:  # a failed preview must not stop the run
            log.warning("preview at step %d failed: %s", step_index, exc)
            return {}
        self.on_preview(step_index, image)
        return {}

    @classmethod
    def for_notebook(cls, every: int = 5, decoder: Any = "auto", size: int = 256) -> "LivePreview":
        """A preview that updates one image in place in the current notebook cell."""
        from IPython.display import display

        handle = display(None, display_id=True)

        def show(step: int, image: Any) -> None:
            handle.update(image.resize((size, round(size * image.height / image.width))))

        return cls(show, every=every, decoder=decoder)
