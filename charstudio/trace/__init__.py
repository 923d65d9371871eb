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

Where things live: ``recorder`` (Trace, StepRecord, Tracer, trace_run), ``latents`` (noise
levels, predicted x0, decoding), ``preview`` (the live preview callback) and ``plots``.

Heavy imports (torch, numpy, PIL, matplotlib, imageio) happen inside functions.
"""

from .latents import decode_latents, is_variance_exploding, predicted_x0, step_noise_level
from .plots import (
    denoising_frames,
    plot_filmstrip,
    plot_latent_channels,
    plot_noise_schedule,
    plot_token_heatmaps,
    save_denoising_gif,
)
from .preview import LivePreview
from .recorder import StepRecord, Trace, Tracer, trace_run

__all__ = [
    "LivePreview",
    "StepRecord",
    "Trace",
    "Tracer",
    "decode_latents",
    "denoising_frames",
    "is_variance_exploding",
    "plot_filmstrip",
    "plot_latent_channels",
    "plot_noise_schedule",
    "plot_token_heatmaps",
    "predicted_x0",
    "save_denoising_gif",
    "step_noise_level",
    "trace_run",
]
