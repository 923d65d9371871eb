"""The model behind the apps: one Studio per model and device, shared by every app in the kernel,
one run at a time on it, and the model controls' choices and defaults.

`RunHooks` is that Studio seen through one app's run: the app's cancel token and progress
reach every picture a core function draws through it.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from ..callbacks import CancelToken, StepProgress

if TYPE_CHECKING:
    from ..studio import Studio

# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------
_STUDIOS: dict[tuple[str, str | None], Studio] = {}
_STUDIO_LOCK = threading.Lock()


def get_studio(model: str, device: str | None = None) -> Studio:
    """A Studio for `model`, loaded once per kernel and shared by every app (models are big)."""
    from ..studio import Studio

    key = (model.strip(), device)
    with _STUDIO_LOCK:
        if key not in _STUDIOS:
            _STUDIOS[key] = Studio.from_pretrained(key[0], device=device)
        return _STUDIOS[key]


_RUN_LOCKS: dict[int, threading.Lock] = {}


@contextlib.contextmanager
def exclusive(studio: Studio, token: CancelToken) -> Iterator[None]:
    """One run at a time per studio, across apps: the apps share its pipelines and schedulers.

    A second app waits here (and can still be cancelled while it waits). A job cancelled before
    it gets here (between two pictures of a job that draws several) stops here.
    """
    token.check()
    with _STUDIO_LOCK:
        lock = _RUN_LOCKS.setdefault(id(studio), threading.Lock())
    while not lock.acquire(timeout=0.2):
        token.check()
    try:
        yield
    finally:
        lock.release()


def model_choices() -> list[str]:
    """The model pickers' list: every preset, SD 1.x and SDXL (any path or hub id can be typed too)."""
    from ..models.presets import PRESETS

    return list(PRESETS)


class StudioSource:
    """The studio an app works with: one passed in, or loaded by model name on first use."""

    def __init__(self, studio: Studio | None = None, model: str = "mini", device: str | None = None):
        self._studio = studio
        self.model = model if studio is None else studio.model_id
        self.device = device

    def get(self, model: str | None = None) -> Studio:
        """The studio for `model` (default: the current one); loads it when it changed."""
        model = (model or self.model).strip()
        if self._studio is None or (model != self.model and model != getattr(self._studio, "model_id", None)):
            self._studio = get_studio(model, self.device)
            self.model = model
        return self._studio

    @property
    def loaded(self) -> Studio | None:
        return self._studio


class RunHooks:
    """A Studio seen through the app: every `run` gets the app's cancel token and progress.

    Core functions such as `interpolation.interpolate` call `studio.run` several times but
    take no cancel token or progress callback themselves; handing them this wrapper lets
    Cancel stop them at the next step and lets the bar count frames. The Studio methods in
    `ROUTED` run on the wrapper too (``hooked.expressions(...)``), so every picture a workflow
    draws, and the start of each, passes the token: a cancelled job stops within one denoising
    step, or before its next picture's preparation when it is between pictures.
    """

    # Studio methods that draw only through `make_config`, `run` and `run_batch`.
    ROUTED = ("generate", "sheet", "turnaround", "expressions", "interpolate", "mix_styles", "pose_animation",
              "lora_sweep", "inpaint", "detail")

    def __init__(self, studio: Studio, token: CancelToken, on_run: Callable[[int], None] | None = None,
                 progress: Callable[[StepProgress], None] | None = None, callbacks: Sequence[Any] = ()):
        self._studio = studio
        self._token = token
        self._on_run = on_run
        self._progress = progress
        self._callbacks = list(callbacks)
        self.runs = 0

    def __getattr__(self, name: str) -> Any:
        studio = self.__dict__.get("_studio")
        if studio is None:
            raise AttributeError(name)
        if name in RunHooks.ROUTED:
            method = getattr(type(studio), name, None)
            if callable(method):  # the Studio's own method, bound to this wrapper
                import types

                return types.MethodType(method, self)
        return getattr(studio, name)

    def run(self, config: Any, **kwargs: Any) -> Any:
        return self._studio.run(config, **self._hook(1, kwargs))

    def run_batch(self, configs: Any, **kwargs: Any) -> Any:
        """`Studio.run_batch` with the app's hooks; its images count as that many renders."""
        configs = list(configs)
        return self._studio.run_batch(configs, **self._hook(len(configs), kwargs))

    def _hook(self, renders: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        self._token.check()
        first = self.runs + 1
        self.runs += renders
        if self._on_run is not None:
            self._on_run(self.runs)
        # Core code may pass cancel=None / progress=None explicitly; those mean "not given".
        if kwargs.get("cancel") is None:
            kwargs["cancel"] = self._token
        if self._progress is not None:
            outer, report = kwargs.get("progress"), self._progress

            def progress(p: StepProgress) -> None:
                # Renders are counted over the whole job: this call's images start at `first`.
                if outer is not None:
                    outer(p)
                report(StepProgress(image=first + p.image - 1, images=self.runs, step=p.step, steps=p.steps,
                                    batch=p.batch))

            kwargs["progress"] = progress
        if self._callbacks:
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or ()), *self._callbacks]
        return kwargs


# Pixel sizes offered for width and height: SD 1.x's, and SDXL's training buckets
# (1024x1024, 832x1216, 896x1152, 768x1344 and their transposes).
SIZES = (64, 96, 128, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024, 1152, 1216, 1344)


def _preset_defaults(model: str) -> tuple[int, float]:
    """(steps, guidance) a model's preset suggests; SD's 25 and 7 for anything else."""
    from ..models.presets import PRESETS

    preset = PRESETS.get(model)
    return (preset.default_steps, preset.default_guidance) if preset else (25, 7.0)


def default_steps(model: str) -> int:
    return _preset_defaults(model)[0]


def default_guidance(model: str) -> float:
    return _preset_defaults(model)[1]
