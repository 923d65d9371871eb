"""DeepCache-style feature caching for diffusers' UNets (Ma et al. 2023, "DeepCache: Accelerating
Diffusion Models for Free"), as a hook of our own.

Between two denoising steps the UNet's deep features change little. With a recipe's
``feature_cache = {"interval": N, "branch": B}``, every N-th step of a pipeline call (the first one
always) runs the UNet in full and keeps what each deep part returned; the steps in between run only
the outer layers and take the deep feature from the last full step. The branch B is one of the
UNet's skip connections, counted from the outside as DeepCache counts them (0 is ``conv_in``'s, then
one per down resnet and per downsampler: 12 on SD 1.5, 9 on SDXL and mini): a cached step runs the
down layers that feed connections 0..B and the up layers that read them, and the up layer that reads
connection B takes, as its input from below, the feature the deeper layers gave on the last full
step. Branch 0, the outermost, runs the fewest layers and saves the most time. The OpenPose
ControlNet is cached the same way (what feeds its deeper residuals and its middle block is reused,
and so is the embedding of the pose picture, the same at every step), so the residuals of
connections 0..B, the only ones a cached step reads, follow the pose at every step.

Why a hook of our own rather than the ``deepcache`` package (0.1.1, 2023): tried with diffusers
0.42.1, its helper draws txt2img, but it finds the step by looking the timestep up in one pipeline's
``scheduler.timesteps``, so a hires or detail pass (another pipeline's scheduler) stops with
``ValueError: 405 is not in list``; it never resets between calls; Heun's repeated timesteps give 13
full steps out of 20 at interval 3; the ControlNet runs in full at every step.

Here a step is a change of timestep, seen by forward pre-hooks on the UNet and the ControlNet (the
ControlNet runs first in a step); a timestep that goes up, or latents of another shape, start a new
denoising pass with a full step. `feature_cache` is entered around each pipeline call
(`charstudio.workflows.run.drawing_context`), so each call, the hires fix's and a detail pass's
too, counts its own steps from a full one. Leaving the context, after an error too, puts every
block's own ``forward`` back.

Reference attention (charstudio.sheets.reference) records each self-attention layer's input at
each UNet call. A skipped layer records nothing, so while an anchor records, each skipped layer
records its last full step's input again, standing for the cached feature: the anchor's
recording stays one entry per step, and later pictures read it step by step as before.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, ContextManager, Iterator

from ..errors import ConfigError
from ..models.speed import FEATURE_CACHE_ATTR

if TYPE_CHECKING:
    from ..recipe.config import GenerationConfig
    from ..studio import Studio

log = logging.getLogger(__name__)

CONTROLNET_MODES = ("shallow", "full", "reuse")


def _down_units(net: Any) -> list[tuple[int, int, list[tuple[str, Any]]]]:
    """The down path as (skip connection, down block, its modules) in order: each resnet (with its
    attention) and each downsampler feeds one skip connection; connection 0 is ``conv_in``'s."""
    units, r = [], 1
    for i, block in enumerate(net.down_blocks):
        attentions = getattr(block, "attentions", None) or []
        for j, resnet in enumerate(block.resnets):
            mods = [(f"down_blocks.{i}.resnets.{j}", resnet)]
            if j < len(attentions):
                mods.append((f"down_blocks.{i}.attentions.{j}", attentions[j]))
            units.append((r, i, mods))
            r += 1
        for j, sampler in enumerate(getattr(block, "downsamplers", None) or []):
            units.append((r, i, [(f"down_blocks.{i}.downsamplers.{j}", sampler)]))
            r += 1
    return units


def max_branch(unet: Any) -> int:
    """The deepest skip branch `unet` has: its skip connections less one (the deepest branch caches
    only the middle block). SD 1.5's UNet has 12 (0-11), SDXL's 9 (0-8)."""
    blocks = getattr(unet, "down_blocks", None)
    if not blocks or getattr(unet, "mid_block", None) is None or not getattr(unet, "up_blocks", None):
        raise ConfigError("feature_cache", type(unet).__name__,
                          "a diffusers UNet2DConditionModel (down, middle and up blocks); use None on this model")
    connections = 1 + len(_down_units(unet))
    if sum(len(b.resnets) for b in unet.up_blocks) != connections:
        raise ConfigError("feature_cache", type(unet).__name__,
                          "a UNet whose up blocks read each skip connection once; use None on this model")
    return connections - 1


def check_branch(unet: Any, branch: int) -> int:
    """`branch` if `unet` has it, else a ConfigError naming feature_cache.branch and this model's range."""
    top = max_branch(unet)
    if not 0 <= branch <= top:
        raise ConfigError("feature_cache.branch", branch,
                          f"0 to {top} for this model (its {top + 1} skip connections; 0, the outermost, is the fastest)")
    return branch


def feature_cache(studio: Studio, config: GenerationConfig) -> ContextManager[Any]:
    """The recipe's feature cache on `studio`'s UNet (and ControlNet, if loaded), for one pipeline
    call; a do-nothing context when the recipe has none. Yields the `FeatureCache` (or None)."""
    settings = config.feature_cache
    if not settings:
        return nullcontext(None)
    unet = studio.components["unet"]
    branch = check_branch(unet, int(settings.get("branch", 0)))
    return cache_unet(unet, int(settings["interval"]), branch, controlnet=studio.components.get("controlnet"))


class FeatureCache:
    """The state the hooks share: which step of the pass runs, whether it is a full one, and what
    each skipped part returned on the last full step. ``full_steps`` / ``cached_steps`` count the steps."""

    def __init__(self, interval: int, branch: int):
        self.interval, self.branch = interval, branch
        self.step = -1
        self.full = True
        self.full_steps = self.cached_steps = 0
        self._last_t: float | None = None
        self._shapes: dict[str, tuple] = {}  # each caller's latents' shape at the last full step
        self.outputs: dict[Any, Any] = {}

    def begin(self, timestep: Any, sample: Any, who: str) -> None:
        """`who` (the UNet or the ControlNet) is called at `timestep` on `sample`: a new step when
        the timestep changed (calls at one timestep belong to one step), a new pass, with a full
        step, when it went up or when `who`'s latents changed shape since the last full step."""
        t = float(timestep.flatten()[0]) if hasattr(timestep, "flatten") else float(timestep)
        shape = (tuple(sample.shape), sample.dtype, sample.device)
        changed = self._shapes.get(who, shape) != shape
        if t != self._last_t or changed:
            new_pass = self._last_t is None or t > self._last_t or changed
            self.step = 0 if new_pass else self.step + 1
            self._last_t = t
            self.full = new_pass or self.step % self.interval == 0
            if self.full:
                self.full_steps += 1
            else:
                self.cached_steps += 1
        if self.full:
            self._shapes[who] = shape

    def run(self, key: Any, forward: Any, args: tuple, kwargs: dict) -> Any:
        """A skipped part's call: run and keep its output on a full step, else the kept output."""
        if self.full or key not in self.outputs:
            self.outputs[key] = forward(*args, **kwargs)
        return self.outputs[key]


def _deep_modules(net: Any, branch: int, up: bool = True) -> list[tuple[str, Any]]:
    """What a cached step skips: on the way down, what feeds the skip connections past `branch`
    (whole blocks where it can), the middle block; on the way up, what reads them, up to the
    layer that reads connection `branch`, whose input from below is the cached feature."""
    skipped: list[tuple[str, Any]] = []
    units = _down_units(net)
    for i, block in enumerate(net.down_blocks):
        mine = [(r, mods) for r, b, mods in units if b == i]
        if all(r > branch for r, _ in mine):
            skipped.append((f"down_blocks.{i}", block))
        else:
            skipped += [m for r, mods in mine if r > branch for m in mods]
    skipped.append(("mid_block", net.mid_block))
    if not up:
        return skipped
    r = len(units)  # the connection the first up layer reads: the deepest
    for i, block in enumerate(net.up_blocks):
        reads = list(range(r, r - len(block.resnets), -1))
        r -= len(block.resnets)
        if all(k > branch for k in reads):
            skipped.append((f"up_blocks.{i}", block))  # its upsampler too
            continue
        attentions = getattr(block, "attentions", None) or []
        for j, k in enumerate(reads):
            if k > branch:
                skipped.append((f"up_blocks.{i}.resnets.{j}", block.resnets[j]))
                if j < len(attentions):
                    skipped.append((f"up_blocks.{i}.attentions.{j}", attentions[j]))
    return skipped


def _recording_layers(blocks: list[tuple[str, Any]]) -> list[Any]:
    """The self-attention layers inside `blocks` (where reference attention records)."""
    from diffusers.models.attention_processor import Attention

    return [m for _, block in blocks for m in block.modules() if isinstance(m, Attention) and not m.is_cross_attention]


def _hold_reference_records(layers: list[Any]) -> None:
    """On a cached step: each skipped self-attention layer whose reference processor records keeps
    its entry count in step with the UNet calls by recording its last input again."""
    from ..sheets.reference import ReferenceAttnProcessor

    for layer in layers:
        proc = layer.processor
        if isinstance(proc, ReferenceAttnProcessor) and proc.bank.mode == "record":
            states = proc.bank.states.get(proc.name)
            if states:
                states.append(states[-1])


class _Patches:
    """The forwards put in place and the hooks registered, all taken off by `close`."""

    def __init__(self, state: FeatureCache):
        self.state = state
        self.wrapped: list[tuple[Any, Any]] = []  # (module, its own instance forward or None)
        self.handles: list[Any] = []

    def wrap(self, module: Any, key: Any) -> None:
        """`module` runs through the cache: in full on full steps, its kept output otherwise."""
        own, forward, state = module.__dict__.get("forward"), module.forward, self.state

        def cached_forward(*args: Any, **kwargs: Any) -> Any:
            return state.run(key, forward, args, kwargs)

        self.wrapped.append((module, own))
        module.forward = cached_forward

    def hook(self, module: Any, who: str, then: Any = None) -> None:
        """Tell the state of each call of `module` (its timestep and latents) before it runs."""
        state = self.state

        def called(mod: Any, args: tuple, kwargs: dict) -> None:
            state.begin(args[1] if len(args) > 1 else kwargs["timestep"], args[0] if args else kwargs["sample"], who)
            if then is not None and not state.full:
                then()

        self.handles.append(module.register_forward_pre_hook(called, with_kwargs=True))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        for module, own in reversed(self.wrapped):
            if own is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = own
        self.state.outputs.clear()


def _cache_controlnet(patches: _Patches, controlnet: Any, unet: Any, branch: int, mode: str) -> None:
    if mode == "full":
        return
    patches.hook(controlnet, "controlnet")
    if mode == "reuse":
        patches.wrap(controlnet, ("controlnet", ""))
    elif getattr(controlnet, "down_blocks", None) is not None and len(_down_units(controlnet)) == len(_down_units(unet)):
        for name, block in _deep_modules(controlnet, branch, up=False):
            patches.wrap(block, ("controlnet", name))
        if getattr(controlnet, "controlnet_cond_embedding", None) is not None:
            # Its input, the pose picture, is the same at every step of a call.
            patches.wrap(controlnet.controlnet_cond_embedding, ("controlnet", "controlnet_cond_embedding"))


@contextmanager
def cache_unet(unet: Any, interval: int, branch: int = 0, *, controlnet: Any = None,
               controlnet_mode: str = "shallow") -> Iterator[FeatureCache]:
    """Cache `unet`'s deep layers (and `controlnet`'s) for the pipeline calls run inside.

    `controlnet_mode`: "shallow" (its deep layers cached like the UNet's; the default), "full"
    (it runs in full every step) or "reuse" (it runs on full steps only, its residuals reused).
    """
    if controlnet_mode not in CONTROLNET_MODES:
        raise ConfigError("controlnet_mode", controlnet_mode, f"one of {', '.join(CONTROLNET_MODES)}")
    check_branch(unet, branch)
    state = FeatureCache(interval, branch)
    patches = _Patches(state)
    try:
        deep = _deep_modules(unet, branch)
        layers = _recording_layers(deep)
        patches.hook(unet, "unet", then=lambda: _hold_reference_records(layers))
        for name, module in deep:
            patches.wrap(module, ("unet", name))
        if controlnet is not None:
            _cache_controlnet(patches, controlnet, unet, branch, controlnet_mode)
        for net in (unet, controlnet):
            if net is not None:  # the fast path's compiled forward runs these eager meanwhile
                setattr(net, FEATURE_CACHE_ATTR, state)
        log.debug("feature cache: interval %d, branch %d, %d UNet parts cached", interval, branch, len(deep))
        yield state
    finally:
        patches.close()  # after an error too: every module's own forward back
        for net in (unet, controlnet):
            if net is not None and net.__dict__.get(FEATURE_CACHE_ATTR) is not None:
                delattr(net, FEATURE_CACHE_ATTR)
        log.debug("feature cache: %d full steps, %d cached", state.full_steps, state.cached_steps)
