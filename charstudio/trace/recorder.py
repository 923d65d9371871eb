"""Recording a run: one StepRecord per step from diffusers' step-end callback and a thin
wrapper around the scheduler's step, plus averaged cross-attention maps."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from ..errors import ConfigError
from .latents import predicted_x0, step_noise_level

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)


@dataclass
class StepRecord:
    """What one sampling step did. Tensors are CPU float32 copies (moved once the run ends), (B, C, h, w)."""

    step: int
    timestep: float
    sigma: float | None  # noise level of the step's input: x_t = alpha (x0 + sigma * eps)
    alpha_bar: float | None  # 1 / (1 + sigma^2)
    latents: Any  # x_t after the step (what the next step starts from)
    pred_x0: Any | None  # the clean latents predicted at this step
    noise_pred_norm: float | None  # L2 norm of the guided model output (eps, v or x0)

    @property
    def snr(self) -> float | None:
        if self.alpha_bar is None or self.alpha_bar >= 1.0:
            return None
        return self.alpha_bar / (1.0 - self.alpha_bar)


@dataclass
class Trace:
    """A recorded run: one `StepRecord` per step, plus attention maps when recorded."""

    records: list[StepRecord] = field(default_factory=list)
    prompt: str | None = None
    token_ids: list[int] = field(default_factory=list)  # the prompt's tokens, no BOS/EOS
    tokens: list[str] = field(default_factory=list)
    chunk_len: int = 75
    attention: Any | None = None  # (seq, h, w) mean cross-attention, sums to 1 over seq
    attention_calls: int = 0  # layer x step evaluations averaged into `attention`
    alphas_cumprod: Any | None = None  # the model's training schedule, for plots
    scheduler: str | None = None
    image: Any | None = None  # the pipeline's final image, when known
    tokenizer: Any | None = field(default=None, repr=False)
    family: str = "sd1"  # whose latents these are (charstudio.models.family.FAMILIES), for previews

    def __len__(self) -> int:
        return len(self.records)

    @property
    def timesteps(self) -> list[float]:
        return [r.timestep for r in self.records]

    # -- tokens ---------------------------------------------------------------------------
    def token_position(self, j: int) -> int:
        """Position in the encoder sequence of prompt token j (chunks of 75 + BOS/EOS)."""
        return (j // self.chunk_len) * (self.chunk_len + 2) + 1 + j % self.chunk_len

    def _find(self, word: str | int) -> list[int]:
        if isinstance(word, int) and not isinstance(word, bool):
            if 0 <= word < len(self.token_ids):
                return [word]
        elif isinstance(word, str) and word.strip() and self.tokenizer is not None:
            ids = list(self.tokenizer(word.strip(), add_special_tokens=False).input_ids)
            n = len(ids)
            for s in range(len(self.token_ids) - n + 1):
                if self.token_ids[s:s + n] == ids:
                    return list(range(s, s + n))
        words = (self.prompt or "").split()
        raise ConfigError("token", word, f"not in the prompt; its words are {words} and its tokens are "
                          f"{[_clean_token(t) for t in self.tokens]}")

    def token_map(self, word: str | int) -> Any:
        """Mean cross-attention map (h, w) of a word (its tokens summed) or a token index."""
        import numpy as np

        if self.attention is None:
            raise ConfigError("attention", None, "this trace has no attention maps: trace with attention=True")
        idx = self._find(word)
        att = self.attention
        pos = [self.token_position(j) for j in idx]
        if max(pos) >= att.shape[0]:
            raise ConfigError("token", word, "lies beyond the encoded sequence")
        return np.asarray(att[pos].sum(0))

    def token_maps(self) -> dict[str, Any]:
        """One map per prompt token, keyed `"<index>:<token>"` in prompt order."""
        return {f"{j}:{_clean_token(t)}": self.token_map(j) for j, t in enumerate(self.tokens)}


def _clean_token(t: str) -> str:
    return t.replace("</w>", "")


class _AttentionRecorder:
    """Wraps one cross-attention processor; the wrapped one still produces the output."""

    def __init__(self, original: Any, tracer: "Tracer"):
        self.original = original
        self.tracer = tracer

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None,
                 attention_mask: Any = None, temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if encoder_hidden_states is not None and hidden_states.ndim == 3:
            try:
                self.tracer._record_attention(attn, hidden_states, encoder_hidden_states)
            except Exception as exc:  # recording must never break generation
                log.warning("attention map not recorded: %s", exc)
        return out


class Tracer:
    """A step callback that records a `Trace`; `attach(pipe)` installs what it needs.

    Usage:
        tracer = Tracer(prompt=prompt)
        with tracer.attach(pipe):
            out = pipe(prompt, callback_on_step_end=tracer)
        trace = tracer.trace
    """

    tensor_inputs = ("latents",)

    def __init__(self, prompt: str | None = None, attention: bool = True, keep_latents: bool = True):
        self.attention = attention
        self.keep_latents = keep_latents
        self.trace = Trace(prompt=prompt)
        self._pending: list[dict[str, Any]] = []
        self._att_sum: dict[int, Any] = {}
        self._att_count: dict[int, int] = {}
        self._pipe: Any = None
        self._wrapped: list[tuple[Any, Any]] = []

    # -- installing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def attach(self, pipe: Any) -> Iterator["Tracer"]:
        """Install the step observer (and attention recorders); restore everything on exit."""
        self._pipe = pipe
        unet = pipe.unet
        originals = dict(unet.attn_processors) if self.attention else None
        self._set_tokens(pipe)
        # Studio.run installs a fresh scheduler just before calling the pipeline, so the
        # scheduler to observe is looked up on every UNet call (which precedes its step()).
        hook = unet.register_forward_pre_hook(lambda module, args: self._wrap_scheduler(self._pipe.scheduler))
        try:
            self._wrap_scheduler(pipe.scheduler)
            if originals is not None:
                unet.set_attn_processor({
                    name: (_AttentionRecorder(p, self) if ".attn2." in name else p)
                    for name, p in originals.items()
                })
            yield self
        finally:
            hook.remove()
            if originals is not None:
                unet.set_attn_processor(originals)
            for sched, _ in self._wrapped:
                with contextlib.suppress(AttributeError):
                    del sched.step  # the instance attribute shadowed the class method
            self._wrapped.clear()
            self._to_cpu()
            self._finish_attention()
            ac = getattr(pipe.scheduler, "alphas_cumprod", None)
            if ac is not None:
                self.trace.alphas_cumprod = ac.detach().float().cpu().numpy().copy()
            self.trace.scheduler = type(pipe.scheduler).__name__

    def _set_tokens(self, pipe: Any) -> None:
        tok = getattr(pipe, "tokenizer", None)
        self.trace.tokenizer = tok
        window = int(getattr(tok, "model_max_length", 77) or 77) if tok is not None else 77
        self.trace.chunk_len = (window if window < 1000 else 77) - 2
        if tok is None or not self.trace.prompt:
            return
        from ..prompt_syntax import parse_weighted

        ids: list[int] = []
        # Pieces are tokenized one by one, as conditioning.PromptEncoder does.
        for text, _ in parse_weighted(self.trace.prompt):
            if text:
                ids.extend(tok(text, add_special_tokens=False, verbose=False).input_ids)  # long prompts are chunked, not cut
        self.trace.token_ids = ids
        self.trace.tokens = list(tok.convert_ids_to_tokens(ids))

    def _wrap_scheduler(self, scheduler: Any) -> None:
        if any(s is scheduler for s, _ in self._wrapped):
            return
        original = scheduler.step

        @functools.wraps(original)  # keeps the signature: pipelines inspect it for eta/generator
        def step(model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(model_output, timestep, sample, *args, **kwargs)
            try:
                self._observe_step(scheduler, model_output, timestep, sample, out)
            except Exception as exc:
                log.warning("step not observed: %s", exc)
            return out

        scheduler.step = step
        self._wrapped.append((scheduler, original))

    def _observe_step(self, scheduler: Any, model_output: Any, timestep: Any, sample: Any, out: Any) -> None:
        x0 = None
        if isinstance(out, tuple):
            x0 = out[1] if len(out) > 1 else None
        else:
            x0 = getattr(out, "pred_original_sample", None)
            if x0 is None:
                x0 = getattr(out, "denoised", None)
        index = getattr(scheduler, "step_index", None)
        index = index - 1 if index is not None else None  # step() has already advanced it
        sigma, alpha_bar = step_noise_level(scheduler, timestep, index)
        if x0 is None:
            x0 = predicted_x0(scheduler, model_output.float(), sample.float(), sigma, alpha_bar)
        # Tensors stay on the device until the run ends: a .cpu() or float() here would stall
        # the GPU queue once per step.
        self._pending.append({
            "sigma": sigma,
            "alpha_bar": alpha_bar,
            "pred_x0": None if x0 is None else x0.detach().clone(),
            "noise_pred_norm": model_output.detach().float().norm(),
        })

    # -- the step callback --------------------------------------------------------------------
    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        if not any(s is pipe.scheduler for s, _ in self._wrapped):
            # Only when attach() got another pipeline than the one running.
            log.warning("tracer: this pipeline's scheduler is not observed; x0 of step %d not recorded", step_index)
            self._wrap_scheduler(pipe.scheduler)
            self._pending.clear()
        info = self._pending.pop(0) if self._pending else {}
        self._pending.clear()
        latents = callback_kwargs.get("latents")
        t = float(timestep.item() if hasattr(timestep, "item") else timestep)
        sigma, alpha_bar = info.get("sigma"), info.get("alpha_bar")
        if sigma is None:
            sigma, alpha_bar = step_noise_level(pipe.scheduler, timestep, None)
        self.trace.records.append(StepRecord(
            step=int(step_index),
            timestep=t,
            sigma=sigma,
            alpha_bar=alpha_bar,
            latents=latents.detach().clone() if (latents is not None and self.keep_latents) else None,
            pred_x0=info.get("pred_x0"),
            noise_pred_norm=info.get("noise_pred_norm"),
        ))
        return {}

    def _to_cpu(self) -> None:
        """Move what the run recorded on the device to CPU float32, once, after the run."""
        for r in self.trace.records:
            if r.latents is not None:
                r.latents = r.latents.float().cpu()
            if r.pred_x0 is not None:
                r.pred_x0 = r.pred_x0.float().cpu()
            if r.noise_pred_norm is not None and not isinstance(r.noise_pred_norm, float):
                r.noise_pred_norm = float(r.noise_pred_norm)

    # -- attention ------------------------------------------------------------------------------
    def _record_attention(self, attn: Any, hidden_states: Any, context: Any) -> None:
        import torch

        b = hidden_states.shape[0]
        pipe = self._pipe
        if b % 2 == 0 and getattr(pipe, "do_classifier_free_guidance", False):
            # CFG batches are [negative, positive]: only the prompt half says where words go.
            hidden_states, context = hidden_states[b // 2:], context[b // 2:]
        if getattr(attn, "norm_cross", None):
            context = attn.norm_encoder_hidden_states(context)
        with torch.no_grad():
            q = attn.to_q(hidden_states)
            k = attn.to_k(context)
            heads = attn.heads
            bq, n, inner = q.shape
            d = inner // heads
            q = q.view(bq, n, heads, d).transpose(1, 2).float()
            k = k.view(bq, -1, heads, d).transpose(1, 2).float()
            probs = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)  # (B, heads, n, seq)
            probs = probs.mean(dim=(0, 1))  # (n, seq); stays on the device: no sync per layer
        if n in self._att_sum and self._att_sum[n].shape == probs.shape:
            self._att_sum[n] += probs
            self._att_count[n] += 1
        else:
            self._att_sum[n] = probs
            self._att_count[n] = 1

    def _finish_attention(self) -> None:
        import torch.nn.functional as F

        if not self._att_sum or not self.trace.records or self.trace.records[-1].latents is None:
            if self._att_sum:
                log.warning("attention maps need keep_latents=True to know the latent grid")
            return
        h, w = self.trace.records[-1].latents.shape[-2:]
        total, calls = None, 0
        for n, acc in self._att_sum.items():
            factor = math.sqrt(h * w / n)
            hh, ww = round(h / factor), round(w / factor)
            if hh * ww != n:
                log.warning("attention at %d positions does not fit the %dx%d latent grid; skipped", n, h, w)
                continue
            grid = acc.float().cpu().T.reshape(1, -1, hh, ww)  # (1, seq, hh, ww), summed over calls
            up = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False) if (hh, ww) != (h, w) else grid
            total = up[0] if total is None else total + up[0]
            calls += self._att_count[n]
        if total is None:
            return
        # Bilinear upsampling keeps the sum over tokens (a convex mix of rows that each sum to 1).
        self.trace.attention = (total / calls).numpy()
        self.trace.attention_calls = calls
        self._att_sum.clear()
        self._att_count.clear()


def trace_run(studio: Studio, character_or_prompt: Any = None, *, config: Any = None, attention: bool = True,
              callbacks: Sequence[Callable] = (), **settings: Any) -> tuple[Trace, Any]:
    """Generate one image with a Studio while recording every step; returns (trace, Result).

    Give a card/prompt plus settings (as for `studio.generate`), or a ready `config` recipe.
    Tracing never changes the image: the same recipe without tracing gives the same pixels.
    """
    cfg = config if config is not None else studio.make_config(character_or_prompt, **settings)
    if cfg.num_images != 1:
        cfg = cfg.replace(num_images=1)  # one record per step needs one image per run
    pipe = studio.pipeline("controlnet" if cfg.pose is not None else "txt2img")
    tracer = Tracer(prompt=cfg.prompt, attention=attention)
    tracer.trace.family = studio.family.name
    with tracer.attach(pipe):
        result = studio.run(cfg, callbacks=[tracer, *callbacks])
    tracer.trace.image = result.images[0]
    result.extras["trace"] = tracer.trace
    return tracer.trace, result
