"""Reference attention: record an anchor image's self-attention inputs and let other images
attend to them too (training-free, as diffusers attention processors)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)


class ReferenceBank:
    """Anchor self-attention inputs recorded per layer and per UNet call, and the read mode.

    ``record()`` starts a fresh recording; ``read()`` makes every following UNet call use the
    recording of the same layer at the same denoising timestep (the pipelines call the UNet once
    per step, with the CFG halves batched). The timestep comes from a hook on the UNet
    (`reference_attention` installs it), so any later run reads the right step: a sheet's poses
    split over several calls, or an img2img pass (the hires fix, the detail pass) that starts
    part-way, which reads the anchor's nearest recorded step. Without the hook, calls are
    counted from ``read()`` instead.
    """

    def __init__(self, strength: float, offload: bool = False):
        self.strength = float(strength)
        self.offload = offload
        self.mode = "off"
        self.states: dict[str, list[Any]] = {}
        self.timesteps: list[float] = []  # the anchor's timestep at each recorded UNet call
        self.now: float | None = None  # the timestep of the UNet call running now (from the hook)
        self._calls: dict[str, int] = {}
        self._warned = False

    def record(self) -> None:
        """Record the next run as the anchor."""
        self.mode, self.states, self.timesteps, self._calls = "record", {}, [], {}

    def read(self) -> None:
        """Share the recorded anchor into the next run(s)."""
        if not self.states:
            raise ConfigError("reference", "nothing recorded", "record an anchor run before reading")
        self.mode, self._calls = "read", {}

    def off(self) -> None:
        """Behave exactly like the original processors."""
        self.mode = "off"

    @property
    def recorded_steps(self) -> int:
        return max((len(v) for v in self.states.values()), default=0)

    def unet_called(self, timestep: Any) -> None:
        """The UNet hook: a call at `timestep` starts (recorded with the anchor's states)."""
        self.now = float(timestep.flatten()[0]) if hasattr(timestep, "flatten") else float(timestep)
        if self.mode == "record":
            self.timesteps.append(self.now)

    def _next(self, name: str) -> Any:
        states = self.states.get(name, [])
        if self.now is not None and len(self.timesteps) == len(states) and states:
            i = min(range(len(states)), key=lambda k: abs(self.timesteps[k] - self.now))
            return states[i]
        i = self._calls.get(name, 0)
        self._calls[name] = i + 1
        if i < len(states):
            return states[i]
        if not self._warned:
            self._warned = True
            log.warning("reference attention: the run has more UNet calls than the anchor recorded (%d); "
                        "later steps run without the reference", len(states))
        return None


class ReferenceAttnProcessor:
    """Wraps a UNet self-attention processor: records its input, or attends to the anchor too."""

    def __init__(self, name: str, base: Any, bank: ReferenceBank):
        self.name = name
        self.base = base
        self.bank = bank

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None,
                 attention_mask: Any = None, temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        bank = self.bank
        if encoder_hidden_states is None and hidden_states.ndim == 3:
            if bank.mode == "record":
                bank.states.setdefault(self.name, []).append(
                    hidden_states.detach().to("cpu" if bank.offload else hidden_states.device, copy=True))
            elif bank.mode == "read":
                ref = _rows_for(bank._next(self.name), hidden_states.shape[0])
                usable = (ref is not None and bank.strength > 0 and attention_mask is None
                          and attn.spatial_norm is None and attn.group_norm is None
                          and ref.shape == hidden_states.shape)
                if usable:
                    return self._shared(attn, hidden_states, ref.to(hidden_states.device, hidden_states.dtype))
        return self.base(attn, hidden_states, *args, encoder_hidden_states=encoder_hidden_states,
                         attention_mask=attention_mask, temb=temb, **kwargs)

    def _shared(self, attn: Any, hidden: Any, ref: Any) -> Any:
        import torch
        import torch.nn.functional as F

        b = hidden.shape[0]
        query, key, value = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)
        key_ref, value_ref = attn.to_k(ref), attn.to_v(ref)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: Any) -> Any:
            return x.view(b, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value, key_ref, value_ref = map(heads, (query, key, value, key_ref, value_ref))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key, key_ref = attn.norm_k(key), attn.norm_k(key_ref)
        own = F.scaled_dot_product_attention(query, key, value)
        shared = F.scaled_dot_product_attention(query, torch.cat([key, key_ref], 2), torch.cat([value, value_ref], 2))
        out = torch.lerp(own, shared, self.bank.strength)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden
        return out / attn.rescale_output_factor


def _rows_for(ref: Any, batch: int) -> Any:
    """The anchor's recorded rows for a UNet batch of `batch` rows. The anchor ran alone: its rows
    are [uncond, cond] (or [cond]); a batch of n images holds [uncond x n, cond x n], so each
    anchor row repeats n times in place."""
    if ref is None or ref.shape[0] == batch or batch % ref.shape[0]:
        return ref
    return ref.repeat_interleave(batch // ref.shape[0], dim=0)


def check_strength(strength: Any, field_name: str = "reference_strength") -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise ConfigError(field_name, strength, "a number from 0 (off) to 1 (attend fully to the anchor), e.g. 0.5")
    return float(strength)


@contextmanager
def reference_attention(unet: Any, strength: float, offload: bool = False) -> Iterator[ReferenceBank]:
    """Install reference-attention processors on every self-attention layer of ``unet``.

    Yields the `ReferenceBank`; call ``bank.record()`` before the anchor run and ``bank.read()``
    before the others. The original processors come back on exit, even after an error.
    """
    strength = check_strength(strength)
    original = unet.attn_processors
    bank = ReferenceBank(strength, offload=offload)
    # attn1 is the self-attention of each transformer block; attn2 attends to the prompt.
    procs = {name: ReferenceAttnProcessor(name, proc, bank) if name.endswith("attn1.processor") else proc
             for name, proc in original.items()}
    if not any(isinstance(p, ReferenceAttnProcessor) for p in procs.values()):
        raise ConfigError("unet", type(unet).__name__, "a UNet with self-attention layers (attn1)")
    unet.set_attn_processor(procs)
    handle = None
    if hasattr(unet, "register_forward_pre_hook"):
        def note_timestep(module: Any, args: tuple, kwargs: dict) -> None:
            bank.unet_called(args[1] if len(args) > 1 else kwargs["timestep"])

        handle = unet.register_forward_pre_hook(note_timestep, with_kwargs=True)
    try:
        yield bank
    finally:
        if handle is not None:
            handle.remove()
        unet.set_attn_processor(original)


def record_reference_image(studio: Studio, image: Any, config: Any, bank: ReferenceBank) -> None:
    """Record a user-given reference image as the anchor (the "reference-only" way).

    The image is encoded with the VAE, noised to each timestep of ``config``'s schedule with
    that recipe's seed noise, and run through the UNet with the recipe's prompt, so the recorded
    self-attention inputs line up step by step with the sheet's own runs.
    """
    import torch

    from ..compat import forget_step_index
    from ..schedulers import make_scheduler

    unet = studio.components["unet"]
    latents = studio.encode(image.convert("RGB").resize((config.width, config.height)))
    scheduler = make_scheduler(config.scheduler, studio.base_scheduler_config)
    scheduler.set_timesteps(config.num_inference_steps, device=unet.device)
    generator = torch.Generator("cpu").manual_seed(config.seed)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    encoded = studio.encoder.encode(config.prompt, config.negative_prompt, clip_skip=config.clip_skip)
    cfg = config.guidance_scale > 1.0
    embeds = torch.cat([encoded.negative_prompt_embeds, encoded.prompt_embeds]) if cfg else encoded.prompt_embeds
    embeds = embeds.to(unet.device, unet.dtype)
    bank.record()
    with torch.no_grad():
        for t in scheduler.timesteps:
            # step() is never called here, so each timestep is looked up afresh.
            forget_step_index(scheduler)
            noisy = scheduler.add_noise(latents, noise, t.reshape(1))
            model_in = torch.cat([noisy] * 2) if cfg else noisy
            model_in = scheduler.scale_model_input(model_in, t)
            unet(model_in, t, encoder_hidden_states=embeds, return_dict=False)
