"""The fast path: `Studio.from_pretrained(..., speed="max")` and `studio.set_speed(...)`.

`speed="max"` switches on, per device (`plan_speed` decides; every skip is logged):

- SDPA attention (PyTorch's fused kernel; xformers is swapped out while the fast path is on);
- fused QKV projections on the UNet, ControlNet and VAE: one matmul for q/k/v (self-attention)
  or k/v (cross-attention) instead of three. A layer uses them only while no LoRA (peft)
  adapter wraps its q/k/v, so LoRAs load, change weight, fuse and unload as usual (see
  `FusedQKVAttnProcessor`);
- channels_last memory format for the UNet, ControlNet and VAE (CUDA only by default: on the
  CPU it does not pay);
- `torch.compile` of the UNet's, the ControlNet's and the VAE decoder's forward (CUDA by
  default; on the CPU only when a backend is named, e.g. "eager" or "aot_eager" in tests);
  CUDA graphs with `compile_mode="reduce-overhead"` (CUDA only).

Compiled modules keep their own `forward` gate (`CompiledForward`): it runs the module
uncompiled while gradients are on (LoRA training), while another feature's attention processors
are installed (reference attention, tracing, IP-Adapter, regional prompts), and after
`max_compiles` compilations. Recompiles on a change of picture size, batch size or prompt
length: the first size compiles a static graph (the fastest kernels, and most sessions keep one
size); at the first other size the gate marks the batch, height, width and prompt-length
dimensions of every input dynamic (`torch._dynamo.maybe_mark_dynamic`), so that one recompile
gives a graph every later size reuses (dynamo alone would recompile once per dimension). Each
(re)compilation is logged with the input shapes and counted (`compile_stats`). Other recompiles
come from dynamo's guards: loading a LoRA, its first change of weight (then the weight is a graph
input), fusing and unloading each recompile the UNet once; the per-part limit bounds them.
dynamo's own `recompile_limit` (8 per code object, shared by every instance of a class in the
process) is left as it is.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .speed_qkv import attention_layers, fuse_qkv, plain_processor_types, sdpa_swappable, unfuse_qkv
# Re-exported: the fused projections' public names stay importable from here (lora.runtime, tests).
from .speed_qkv import FusedQKVAttnProcessor, refresh_fused_qkv  # noqa: F401

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)

SPEEDS = ("default", "max")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BACKEND_ENV = "CHARSTUDIO_COMPILE_BACKEND"  # e.g. "eager" / "aot_eager" (fast CPU checks), "inductor"
MODE_ENV = "CHARSTUDIO_COMPILE_MODE"  # one of COMPILE_MODES (inductor only)
MAX_COMPILES = 8  # per compiled module: the first compile and 7 recompiles, then it runs uncompiled
SPED_PARTS = ("unet", "controlnet", "vae")
STATE_ATTR = "_charstudio_speed"  # on each sped-up module: a _ModuleSpeed
# Set on a UNet/ControlNet while charstudio.speed.cache swaps its deep layers' forwards: the module
# then runs uncompiled (a compiled graph would have traced the layers it skips).
FEATURE_CACHE_ATTR = "_charstudio_feature_cache"


@dataclass(frozen=True)
class SpeedPlan:
    """What `speed` does on one device: which optimisations, and why the others are skipped."""

    speed: str
    fused_qkv: bool = False
    channels_last: bool = False
    compile_backend: str | None = None  # None: no torch.compile
    compile_mode: str | None = None  # inductor's mode; None is its default
    max_compiles: int = MAX_COMPILES
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for the log: what is on, and what was skipped."""
        on = [n for n, v in (("SDPA", self.speed != "default"), ("fused QKV", self.fused_qkv),
                             ("channels_last", self.channels_last)) if v]
        if self.compile_backend:
            on.append(f"torch.compile({self.compile_backend}"
                      + (f", mode={self.compile_mode}" if self.compile_mode else "") + ")")
        text = f"speed={self.speed}: " + (", ".join(on) or "nothing")
        return text + ("; " + "; ".join(self.notes) if self.notes else "")


def check_speed(speed: Any, compile_backend: Any = None, compile_mode: Any = None) -> str:
    """Validate `speed` and the compile options (the arguments, else the environment) before any model work."""
    if not isinstance(speed, str) or speed not in SPEEDS:
        raise ConfigError("speed", speed, f"one of {', '.join(SPEEDS)}")
    backend = compile_backend if compile_backend is not None else os.environ.get(BACKEND_ENV) or None
    if backend is not None and (not isinstance(backend, str) or not backend.strip()):
        raise ConfigError("compile_backend", backend, "a torch.compile backend name such as 'inductor', 'eager' or 'aot_eager'")
    if backend is not None:
        import torch

        known = set(torch._dynamo.list_backends(exclude_tags=())) | {"inductor", "eager", "aot_eager"}
        if backend not in known:
            field_name = "compile_backend" if compile_backend is not None else BACKEND_ENV
            raise ConfigError(field_name, backend, f"one of {', '.join(sorted(known))}")
    mode = compile_mode if compile_mode is not None else os.environ.get(MODE_ENV) or None
    if mode is not None and mode not in COMPILE_MODES:
        field_name = "compile_mode" if compile_mode is not None else MODE_ENV
        raise ConfigError(field_name, mode, f"one of {', '.join(COMPILE_MODES)}")
    return speed


def plan_speed(speed: str, device: Any, *, low_vram: bool = False, compile_backend: str | None = None,
               compile_mode: str | None = None, channels_last: bool | None = None, fused_qkv: bool | None = None,
               max_compiles: int = MAX_COMPILES) -> SpeedPlan:
    """Decide what `speed` switches on for `device` (a torch.device or its name).

    None for `channels_last`/`fused_qkv` means the device's default; `compile_backend`/`compile_mode`
    None means `$CHARSTUDIO_COMPILE_BACKEND`/`$CHARSTUDIO_COMPILE_MODE`, else inductor on CUDA and
    no compile elsewhere.
    """
    check_speed(speed, compile_backend, compile_mode)
    if isinstance(max_compiles, bool) or not isinstance(max_compiles, int) or max_compiles < 1:
        raise ConfigError("max_compiles", max_compiles, "a whole number of compilations per module, 1 or more")
    if speed == "default":
        return SpeedPlan("default")
    kind = getattr(device, "type", str(device).split(":")[0])
    cuda = kind == "cuda"
    notes: list[str] = []
    backend = compile_backend if compile_backend is not None else os.environ.get(BACKEND_ENV) or None
    mode = compile_mode if compile_mode is not None else os.environ.get(MODE_ENV) or None
    if backend is None and cuda:
        backend = "inductor"
    elif backend is None:
        notes.append(f"torch.compile skipped on {kind} (it pays on CUDA; name a backend with "
                     f"compile_backend= or ${BACKEND_ENV} to compile anyway)")
    if backend is not None and low_vram:
        notes.append("torch.compile skipped in low-VRAM mode (the offload hooks move weights on every call)")
        backend = None
    if mode is not None and backend != "inductor":
        notes.append(f"compile_mode={mode} ignored: it is an inductor option (backend is {backend})")
        mode = None
    if mode == "reduce-overhead" and not cuda:
        notes.append(f"compile_mode={mode} (CUDA graphs) is CUDA only; using inductor's default mode")
        mode = None
    if mode == "default":
        mode = None
    if channels_last is None:
        channels_last = cuda
        if not cuda:
            notes.append(f"channels_last skipped on {kind} (it pays on CUDA convolutions)")
    if fused_qkv is None:
        fused_qkv = True
    return SpeedPlan("max", fused_qkv=bool(fused_qkv), channels_last=bool(channels_last), compile_backend=backend,
                     compile_mode=mode, max_compiles=max_compiles, notes=tuple(notes))


# -- torch.compile with a gate ---------------------------------------------------------------------
def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _shapes(args: tuple, kwargs: dict) -> str:
    import torch

    def one(v: Any) -> str | None:
        if isinstance(v, torch.Tensor):
            return "x".join(map(str, v.shape))
        return None

    items = [one(a) for a in args] + [f"{k}={s}" for k, v in kwargs.items() if (s := one(v))]
    return ", ".join(i for i in items if i)


def _size_key(args: tuple, kwargs: dict) -> tuple:
    """The sizes that say "another picture size, batch or prompt length": the sample's shape
    (the first argument) and the prompt embeddings' (other inputs, such as a ControlNet's
    residuals, come and go with the pipeline and recompile by themselves)."""
    import torch

    sample = args[0] if args else kwargs.get("sample")
    text = kwargs.get("encoder_hidden_states")
    return tuple(tuple(v.shape) if isinstance(v, torch.Tensor) else None for v in (sample, text))


def _mark_dynamic(value: Any) -> None:
    """Mark the size-varying dimensions of every tensor in `value` (nested tuples, lists, dicts)
    dynamic: the batch (dim 0), a picture's height and width (dims 2, 3 of 4-d tensors) and a
    prompt's length (dim 1 of 3-d ones). `maybe_mark_dynamic`: dynamo may still specialise one
    (sizes 0 and 1 always are) instead of failing."""
    import torch

    if isinstance(value, torch.Tensor):
        dims = {4: (0, 2, 3), 3: (0, 1), 2: (0,), 1: (0,)}.get(value.ndim, ())
        for d in dims:
            torch._dynamo.maybe_mark_dynamic(value, d)
    elif isinstance(value, (tuple, list)):
        for v in value:
            _mark_dynamic(v)
    elif isinstance(value, dict):
        for v in value.values():
            _mark_dynamic(v)


class CompiledForward:
    """The `forward` of a compiled module: torch.compile'd, or the module's own when compiling
    would be wrong or wasteful.

    Uncompiled while gradients are on or the module is in train mode (LoRA training), while an
    attention layer has another feature's processor (reference attention, tracing, IP-Adapter,
    regional prompts keep Python state per step: compiled, they would recompile every step), and
    after `max_compiles` compilations (a warning says so). Everything else, including peft
    adapters and their weights, is dynamo's guards' job: a change recompiles, never reuses a
    stale graph.
    """

    def __init__(self, module: Any, label: str, backend: str, mode: str | None, max_compiles: int):
        import torch

        self.label = label
        self.eager = type(module).forward.__get__(module)
        self.__wrapped__ = self.eager  # inspect.signature(module.forward) sees the module's own
        options: dict[str, Any] = {"backend": backend}
        if mode is not None:
            options["mode"] = mode
        self.compiled = torch.compile(self.eager, **options)
        self.attention = attention_layers(module)
        self.plain = plain_processor_types()
        self.module_training = lambda: module.training
        self.feature_cached = lambda: getattr(module, FEATURE_CACHE_ATTR, None) is not None
        self.max_compiles = max_compiles
        self.compiles = 0
        self.compiled_calls = 0
        self.eager_calls = 0
        self.gave_up = False
        self._said: set[str] = set()
        self.before_call: list[Any] = []  # callables run before each call (late parts: the ControlNet)
        self.first_shapes: tuple | None = None  # the input shapes of the first compiled call
        self.dynamic = False  # True once another shape came: batch/height/width/length marked dynamic

    def eager_reason(self) -> str | None:
        """Why this call runs uncompiled, or None."""
        import torch

        if self.gave_up:
            return f"compiled {self.compiles} times (limit {self.max_compiles})"
        if torch.is_grad_enabled() or self.module_training():
            return "gradients on (training)"
        if self.feature_cached():
            return "feature cache installed (draft mode)"
        for attn in self.attention:
            if type(attn.processor) not in self.plain:
                return f"attention processor {type(attn.processor).__name__} installed"
        return None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for fn in self.before_call:
            fn()
        reason = self.eager_reason()
        if reason is not None:
            self.eager_calls += 1
            if reason not in self._said:
                self._said.add(reason)
                log.info("%s runs uncompiled: %s", self.label, reason)
            return self.eager(*args, **kwargs)
        if not self.dynamic:
            shapes = _size_key(args, kwargs)
            if self.first_shapes is None:
                self.first_shapes = shapes
            elif shapes != self.first_shapes:
                self.dynamic = True
                log.info("%s: a second input size (%s); compiling one graph with the batch, height, width "
                         "and prompt length symbolic, which later sizes reuse", self.label, _shapes(args, kwargs))
        if self.dynamic:
            _mark_dynamic((args, kwargs))
        before = _graph_count()
        out = self.compiled(*args, **kwargs)
        self.compiled_calls += 1
        if _graph_count() > before:
            self.compiles += 1
            what = "compiled" if self.compiles == 1 else f"recompiled ({self.compiles - 1} of {self.max_compiles - 1} allowed)"
            log.info("%s %s for inputs %s", self.label, what, _shapes(args, kwargs))
            if self.compiles >= self.max_compiles:
                self.gave_up = True
                log.warning("%s was compiled %d times (picture sizes, batch sizes, LoRA changes...); it runs "
                            "uncompiled from now on. studio.set_speed('max') starts counting again.",
                            self.label, self.compiles)
        return out


def compile_module(module: Any, label: str, backend: str, mode: str | None = None,
                   max_compiles: int = MAX_COMPILES) -> CompiledForward:
    """Install a `CompiledForward` as `module.forward` (undo with `uncompile_module`)."""
    gate = CompiledForward(module, label, backend, mode, max_compiles)
    module.forward = gate
    return gate


def uncompile_module(module: Any) -> None:
    """Put the module's own forward back."""
    if isinstance(module.__dict__.get("forward"), CompiledForward):
        del module.forward


def compiled_forward(module: Any) -> CompiledForward | None:
    """The module's `CompiledForward`, if it is compiled."""
    fwd = module.__dict__.get("forward") if module is not None else None
    return fwd if isinstance(fwd, CompiledForward) else None


# -- the whole studio ----------------------------------------------------------------------------------
@dataclass
class _ModuleSpeed:
    plan: SpeedPlan
    done: list[str] = field(default_factory=list)


def _memory_format(module: Any, channels_last: bool) -> None:
    import torch

    module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def speed_up_part(name: str, module: Any, plan: SpeedPlan) -> list[str]:
    """Apply `plan` to one part (unet, controlnet or vae); returns what was done."""
    done: list[str] = []
    if module is None or getattr(module, STATE_ATTR, None) is not None:
        return done
    if plan.fused_qkv:
        n = fuse_qkv(module)
        if n:
            done.append(f"{name}: fused QKV in {n} attention layers")
    else:  # SDPA at least
        for attn in attention_layers(module):
            if sdpa_swappable(attn.processor) and type(attn.processor).__name__ != "AttnProcessor2_0":
                from diffusers.models.attention_processor import AttnProcessor2_0

                attn._charstudio_processor = attn.processor
                attn.set_processor(AttnProcessor2_0())
    if plan.channels_last:
        _memory_format(module, True)
        done.append(f"{name}: channels_last")
    if plan.compile_backend:
        target = module.decoder if name == "vae" else module
        label = {"unet": "the UNet", "controlnet": "the ControlNet", "vae": "the VAE decoder"}[name]
        compile_module(target, label, plan.compile_backend, plan.compile_mode, plan.max_compiles)
        done.append(f"{label}: torch.compile({plan.compile_backend})")
    setattr(module, STATE_ATTR, _ModuleSpeed(plan, done))
    return done


def slow_down_part(name: str, module: Any) -> None:
    """Undo `speed_up_part`."""
    state = getattr(module, STATE_ATTR, None) if module is not None else None
    if state is None:
        return
    if name == "vae":
        uncompile_module(module.decoder)
    uncompile_module(module)
    if state.plan.channels_last:
        _memory_format(module, False)
    unfuse_qkv(module)
    for attn in attention_layers(module):  # processors swapped for SDPA without fusing
        if hasattr(attn, "_charstudio_processor"):
            attn.set_processor(attn._charstudio_processor)
            del attn._charstudio_processor
    delattr(module, STATE_ATTR)


def apply_speed(studio: Studio, plan: SpeedPlan) -> list[str]:
    """Put `studio`'s UNet, ControlNet (now, or when it loads) and VAE on `plan`; undo any earlier
    plan first. Returns what was done (also logged)."""
    components = studio.components
    for name in SPED_PARTS:
        slow_down_part(name, components.get(name))
    if plan.speed == "default":
        from .device import configure_attention

        if studio.attention == "xformers":  # the fast path swapped xformers for SDPA
            configure_attention(studio.pipeline("txt2img"), "xformers")
        log.info(plan.describe())
        return []
    done: list[str] = []
    for name in SPED_PARTS:
        done += speed_up_part(name, components.get(name), plan)
    unet_gate = compiled_forward(components.get("unet"))
    if unet_gate is not None:
        def late_controlnet() -> None:  # a downloaded model's ControlNet loads on first use
            net = components.get("controlnet")
            if net is not None and getattr(net, STATE_ATTR, None) is None:
                log.info("speed=%s for the ControlNet loaded just now: %s", plan.speed,
                         "; ".join(speed_up_part("controlnet", net, plan)) or "nothing")

        unet_gate.before_call.append(late_controlnet)
    elif components.get("controlnet") is None:
        log.info("the ControlNet is not loaded yet: it runs uncompiled when it loads unless set_speed is called again")
    log.info("%s (%s)", plan.describe(), "; ".join(done) or "nothing to change")
    return done


def compile_stats(studio: Studio) -> dict[str, dict[str, int]]:
    """Per compiled part: how often it compiled, and its compiled and uncompiled calls."""
    stats = {}
    components = studio.components
    for name in SPED_PARTS:
        module = components.get(name)
        if module is None:
            continue
        gate = compiled_forward(module.decoder if name == "vae" else module)
        if gate is not None:
            stats[name] = {"compiles": gate.compiles, "compiled_calls": gate.compiled_calls,
                           "eager_calls": gate.eager_calls}
    return stats
