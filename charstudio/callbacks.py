"""Step callbacks: the one hook into a run (progress, previews, tracing, cancel, latent edits).

Everything plugs into diffusers' `callback_on_step_end`. A step callback is any callable

    cb(pipe, step_index, timestep, callback_kwargs) -> dict

that may return replacements (e.g. {"latents": edited}). It may declare `tensor_inputs`
(names from the pipeline's `_callback_tensor_inputs`); "latents" is always passed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .errors import GenerationCancelled

StepCallback = Callable[[Any, int, Any, dict], dict]


@dataclass(frozen=True)
class StepProgress:
    """Where a run is: image `image` of `images`, step `step` of `steps` (both 1-based).

    Images drawn together in one UNet batch report once per step: `image` is the batch's first
    and `batch` how many it holds (images `image` .. `image + batch - 1` are all at `step`).
    """

    image: int
    images: int
    step: int
    steps: int
    batch: int = 1

    @property
    def done(self) -> int:
        """Image-steps finished so far."""
        return (self.image - 1) * self.steps + self.step * self.batch

    @property
    def fraction(self) -> float:
        return self.done / (self.images * self.steps)


class CancelToken:
    """Set from any thread (a UI button, a signal handler) to stop a run at the next step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def reset(self) -> None:
        self._event.clear()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise GenerationCancelled("cancelled by the user")


def chain(callbacks: Iterable[StepCallback]) -> tuple[StepCallback | None, list[str]]:
    """Combine step callbacks into one for `callback_on_step_end`, plus the tensors they need.

    Each callback sees the latents (and other tensors) as left by the ones before it.
    """
    cbs = [cb for cb in callbacks if cb is not None]
    if not cbs:
        return None, []
    names = ["latents"]
    for cb in cbs:
        for name in getattr(cb, "tensor_inputs", ()):
            if name not in names:
                names.append(name)

    def combined(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        kwargs = dict(kwargs)
        for cb in cbs:
            out = cb(pipe, step, timestep, kwargs)
            if out:
                kwargs.update(out)
        return kwargs

    return combined, names
