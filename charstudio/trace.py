"""Seeing the diffusion process: per-step records, attention maps, plots, live previews.

How a step is observed. The one hook is diffusers' `callback_on_step_end`; a `Tracer` is such
a callback and writes one `StepRecord` per step (timestep, sigma, alpha-bar, x_t, predicted
x0, noise-prediction norm). The callback only sees the latents *after* the step, not the noise
prediction nor the latents that went in, so while tracing a thin wrapper around the
scheduler's own `step` notes its inputs and output; the callback then files them.

Predicted x0, for every scheduler. Euler, Euler a, DDIM and DDPM return `pred_original_sample`
and LCM returns `denoised` (with its consistency boundary scalings); those are the very x0
the scheduler used, so they are taken as-is. DPM++ 2M (Karras or not), UniPC and other
multistep solvers return only the next sample; for them x0 comes from the step's input and
its noise level: x0 = (x_t - sigma_t * eps) / alpha_t, with alpha_t = 1/sqrt(1+sigma^2),
sigma_t = sigma * alpha_t taken from the scheduler's `sigmas[step_index]` (exact for Karras
sigmas, whose timesteps are not integers), or from `alphas_cumprod[t]` when a scheduler has
no sigmas. v-prediction and sample-prediction models are handled from the same two numbers.

Cross-attention maps (the DAAM idea). While tracing, every UNet cross-attention processor
is wrapped: the original processor still computes the output (so the image is unchanged,
bit for bit), and the wrapper recomputes softmax(QK^T) for the prompt half of the CFG batch,
averages the heads and accumulates per resolution. Maps are upsampled to the latent grid
and averaged over layers and steps, so at every pixel they sum to 1 over the token axis.
The original processors are restored on exit, even on error; untraced runs pay nothing.

Heavy imports (torch, numpy, PIL, matplotlib, imageio) happen inside functions.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .errors import ConfigError

log = logging.getLogger(__name__)

# Linear map from SD 1.x latent channels to RGB (the widely used "approx cheap" preview
# factors), good enough to see composition forming at no cost.
_SD15_LATENT_RGB = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


# --------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------
def decode_latents(latents: Any, decoder: Any) -> list[Any]:
    """Decode UNet-space latents (B, C, h, w) to PIL images.

    `decoder` is an AutoencoderKL (full VAE), an AutoencoderTiny (TAESD: cheap previews), or
    "approx" (a linear latent-to-RGB map: free, blurry, 1/8 size).
    """
    import numpy as np
    import torch
    from PIL import Image

    if isinstance(decoder, str):
        if decoder != "approx":
            raise ConfigError("decoder", decoder, "a VAE, an AutoencoderTiny, or 'approx'")
        return _approx_rgb(latents)
    param = next(decoder.parameters())
    cfg = decoder.config
    z = latents.to(param.device, param.dtype) / getattr(cfg, "scaling_factor", 1.0)
    shift = getattr(cfg, "shift_factor", None)
    if shift:
        z = z + shift
    with torch.no_grad():
        img = decoder.decode(z).sample
    arr = ((img.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


def _approx_rgb(latents: Any) -> list[Any]:
    import numpy as np
    import torch
    from PIL import Image

    z = latents.detach().float().cpu()
    if z.shape[1] == 4:
        rgb = torch.einsum("bchw,cr->brhw", z, torch.tensor(_SD15_LATENT_RGB))
    else:  # unknown latent space: show the first three channels, each normalised
        rgb = z[:, :3]
        rgb = (rgb - rgb.mean(dim=(2, 3), keepdim=True)) / rgb.std(dim=(2, 3), keepdim=True).clamp_min(1e-6) * 0.5
    arr = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


def _step_noise_level(scheduler: Any, timestep: Any, index: int | None) -> tuple[float | None, float | None]:
    """(sigma, alpha_bar) of the step at `index` (or at `timestep` without sigmas)."""
    import torch

    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and index is not None and 0 <= index < len(sigmas):
        s = float(sigmas[index])
        return s, 1.0 / (1.0 + s * s)
    ac = getattr(scheduler, "alphas_cumprod", None)
    if ac is not None:
        t = int(timestep.item() if torch.is_tensor(timestep) else timestep)
        t = min(max(t, 0), len(ac) - 1)
        ab = float(ac[t])
        return math.sqrt((1.0 - ab) / ab), ab
    return None, None


def _is_variance_exploding(scheduler: Any) -> bool:
    """Euler-family schedulers keep x = x0 + sigma*eps (unscaled) and scale only the UNet input."""
    return getattr(scheduler, "sigmas", None) is not None and not hasattr(scheduler, "_sigma_to_alpha_sigma_t") \
        and float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0


def predicted_x0(scheduler: Any, model_output: Any, sample: Any, sigma: float | None,
                 alpha_bar: float | None) -> Any | None:
    """x0 from one step's input sample and model output, for schedulers that do not return it."""
    if sigma is None or alpha_bar is None:
        return None
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    if _is_variance_exploding(scheduler):
        if kind == "epsilon":
            return sample - sigma * model_output
        if kind == "v_prediction":
            return model_output * (-sigma / math.sqrt(sigma ** 2 + 1)) + sample / (sigma ** 2 + 1)
        return model_output
    alpha_t, sigma_t = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if kind == "epsilon":
        return (sample - sigma_t * model_output) / alpha_t
    if kind == "v_prediction":
        return alpha_t * sample - sigma_t * model_output
    return model_output


# --------------------------------------------------------------------------------------------
# attention recording
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# the tracer
# --------------------------------------------------------------------------------------------
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
        from .prompt_syntax import parse_weighted

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
        sigma, alpha_bar = _step_noise_level(scheduler, timestep, index)
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
            sigma, alpha_bar = _step_noise_level(pipe.scheduler, timestep, None)
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


# --------------------------------------------------------------------------------------------
# live previews
# --------------------------------------------------------------------------------------------
class LivePreview:
    """Step callback: every `every` steps, decode a small preview and hand it to `on_preview`.

    `on_preview(step_index, image)` gets a PIL image of the current latents. `decoder` is
    "approx" (free, 1/8 size), an AutoencoderTiny (cheap, full size) or the VAE (exact, slow).
    """

    tensor_inputs = ("latents",)

    def __init__(self, on_preview: Callable[[int, Any], None], every: int = 5, decoder: Any = "approx"):
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
        if _is_variance_exploding(sched):
            idx = getattr(sched, "step_index", None)
            if idx is not None and idx < len(sched.sigmas):
                latents = latents / math.sqrt(float(sched.sigmas[idx]) ** 2 + 1.0)  # back to unit scale
        try:
            image = decode_latents(latents, self.decoder)[0]
        except Exception as exc:  # a failed preview must not stop the run
            log.warning("preview at step %d failed: %s", step_index, exc)
            return {}
        self.on_preview(step_index, image)
        return {}

    @classmethod
    def for_notebook(cls, every: int = 5, decoder: Any = "approx", size: int = 256) -> "LivePreview":
        """A preview that updates one image in place in the current notebook cell."""
        from IPython.display import display

        handle = display(None, display_id=True)

        def show(step: int, image: Any) -> None:
            handle.update(image.resize((size, round(size * image.height / image.width))))

        return cls(show, every=every, decoder=decoder)


# --------------------------------------------------------------------------------------------
# plots and animations
# --------------------------------------------------------------------------------------------
def _pick(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _save_figure(fig: Any, path: str | os.PathLike, overwrite: bool) -> Path:
    import matplotlib.pyplot as plt

    from .io_utils import atomic_write

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"),
                            overwrite=overwrite)
    finally:
        plt.close(fig)


def _plt() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        with contextlib.suppress(Exception):
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _need_records(trace: Trace) -> None:
    if not trace.records:
        raise ConfigError("trace", "empty", "no steps were recorded")


def plot_filmstrip(trace: Trace, path: str | os.PathLike, decoder: Any = "approx", max_frames: int = 8,
                   overwrite: bool = False) -> Path:
    """Two rows over the chosen steps: x_t (top) and the predicted x0 (bottom)."""
    _need_records(trace)
    plt = _plt()
    idx = _pick(len(trace.records), max_frames)
    fig, axes = plt.subplots(2, len(idx), figsize=(1.8 * len(idx), 4.0), squeeze=False)
    for col, i in enumerate(idx):
        r = trace.records[i]
        for row, (lat, _label) in enumerate(((r.latents, "x_t"), (r.pred_x0, "x0"))):
            ax = axes[row][col]
            ax.axis("off")
            if lat is None:
                continue
            shown = lat[:1]
            if row == 0 and r.alpha_bar is not None and r.sigma is not None and r.sigma > 1.5:
                shown = shown * math.sqrt(r.alpha_bar)  # unit scale, so high-noise steps are visible
            ax.imshow(decode_latents(shown, decoder)[0])
            if row == 0:
                ax.set_title(f"step {r.step} (t={r.timestep:.0f})", fontsize=8)
        axes[0][0].text(-0.1, 0.5, "x_t", transform=axes[0][0].transAxes, ha="right", va="center")
        axes[1][0].text(-0.1, 0.5, "pred x0", transform=axes[1][0].transAxes, ha="right", va="center")
    fig.suptitle(f"{trace.scheduler or ''}: noisy latents and predicted clean image", fontsize=9)
    return _save_figure(fig, path, overwrite)


def plot_noise_schedule(trace: Trace, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """alpha-bar and log10 SNR over the training timesteps, marking the sampled steps."""
    import numpy as np

    if trace.alphas_cumprod is None:
        raise ConfigError("trace", "no schedule", "the scheduler had no alphas_cumprod to plot")
    plt = _plt()
    ab = np.asarray(trace.alphas_cumprod, dtype=np.float64)
    t = np.arange(len(ab))
    snr = ab / np.clip(1.0 - ab, 1e-12, None)
    fig, ax1 = plt.subplots(figsize=(7, 3.5))
    ax1.plot(t, ab, color="tab:blue", label="alpha-bar")
    ax1.set_xlabel("timestep t")
    ax1.set_ylabel("alpha-bar", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(t, np.log10(snr), color="tab:orange", label="log10 SNR")
    ax2.set_ylabel("log10 SNR", color="tab:orange")
    for r in trace.records:
        ax1.axvline(r.timestep, color="gray", alpha=0.35, lw=0.8)
        if r.alpha_bar is not None:
            ax1.plot([r.timestep], [r.alpha_bar], "o", color="tab:red", ms=3)
    ax1.set_title(f"noise schedule; {len(trace.records)} sampled steps marked ({trace.scheduler or ''})", fontsize=9)
    return _save_figure(fig, path, overwrite)


def plot_token_heatmaps(trace: Trace, path: str | os.PathLike, words: Sequence[str | int] | None = None,
                        image: Any = None, overwrite: bool = False) -> Path:
    """Cross-attention heat maps of the given words (default: every token) over the image."""
    import numpy as np
    from PIL import Image

    if trace.attention is None:
        raise ConfigError("attention", None, "this trace has no attention maps: trace with attention=True")
    image = image if image is not None else trace.image
    if words is None:
        maps = trace.token_maps()
    else:
        maps = {str(w): trace.token_map(w) for w in words}
    if not maps:
        raise ConfigError("words", words, "the prompt has no tokens to show")
    plt = _plt()
    cols = min(len(maps), 6)
    rows = -(-len(maps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, m) in zip(axes.flat, maps.items()):
        m = np.asarray(m, dtype=np.float64)
        m = (m - m.min()) / max(m.max() - m.min(), 1e-12)
        if image is not None:
            size = image.size
            ax.imshow(image)
            heat = np.asarray(Image.fromarray(np.uint8(m * 255)).resize(size, Image.BILINEAR)) / 255.0
            ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        else:
            ax.imshow(m, cmap="jet", vmin=0, vmax=1)
        ax.set_title(name, fontsize=8)
    fig.suptitle(f"cross-attention per token, mean of {trace.attention_calls} layer-steps", fontsize=9)
    return _save_figure(fig, path, overwrite)


def plot_latent_channels(trace: Trace, path: str | os.PathLike, which: str = "pred_x0", max_steps: int = 6,
                         overwrite: bool = False) -> Path:
    """Each latent channel (columns) at a few steps (rows), of x_t ("latents") or "pred_x0"."""
    if which not in ("latents", "pred_x0"):
        raise ConfigError("which", which, "choose 'latents' or 'pred_x0'")
    _need_records(trace)
    recs = [r for r in trace.records if getattr(r, which) is not None]
    if not recs:
        raise ConfigError("which", which, "no step recorded these latents")
    plt = _plt()
    idx = _pick(len(recs), max_steps)
    channels = getattr(recs[0], which).shape[1]
    fig, axes = plt.subplots(len(idx), channels, figsize=(1.6 * channels, 1.6 * len(idx)), squeeze=False)
    for row, i in enumerate(idx):
        lat = getattr(recs[i], which)[0]
        for c in range(channels):
            ax = axes[row][c]
            ax.imshow(lat[c].numpy(), cmap="coolwarm")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"channel {c}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"step {recs[i].step}", fontsize=8)
    fig.suptitle(f"latent channels of {which}", fontsize=9)
    return _save_figure(fig, path, overwrite)


def denoising_frames(trace: Trace, decoder: Any, which: str = "pred_x0") -> list[Any]:
    """One decoded image per step, of the predicted x0 (default) or of x_t."""
    _need_records(trace)
    frames = []
    for r in trace.records:
        lat = getattr(r, which)
        if lat is not None:
            frames.append(decode_latents(lat[:1], decoder)[0])
    return frames


def save_denoising_gif(trace: Trace, path: str | os.PathLike, decoder: Any, which: str = "pred_x0",
                       fps: float = 6.0, overwrite: bool = False) -> Path:
    """An animated GIF of the image emerging, one frame per step (last frame held longer)."""
    from .interpolation import save_gif

    frames = denoising_frames(trace, decoder, which)
    if len(frames) < 2:
        raise ConfigError("trace", len(frames), "a denoising GIF needs at least 2 recorded steps")
    return save_gif(frames + [frames[-1]] * 3, path, fps=fps, overwrite=overwrite)


def trace_run(studio: Any, character_or_prompt: Any = None, *, config: Any = None, attention: bool = True,
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
    with tracer.attach(pipe):
        result = studio.run(cfg, callbacks=[tracer, *callbacks])
    tracer.trace.image = result.images[0]
    result.extras["trace"] = tracer.trace
    return tracer.trace, result
