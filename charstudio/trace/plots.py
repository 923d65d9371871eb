"""Pictures of a trace: filmstrip, noise schedule, token heatmaps, latent channels, GIF."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from ..models.family import FAMILIES
from .latents import decode_latents
from .recorder import Trace


def _pick(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _save_figure(fig: Any, path: str | os.PathLike, overwrite: bool) -> Path:
    import matplotlib.pyplot as plt

    from ..io_utils import atomic_write

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
            ax.imshow(decode_latents(shown, decoder, FAMILIES[trace.family])[0])
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
            frames.append(decode_latents(lat[:1], decoder, FAMILIES[trace.family])[0])
    return frames


def save_denoising_gif(trace: Trace, path: str | os.PathLike, decoder: Any, which: str = "pred_x0",
                       fps: float = 6.0, overwrite: bool = False) -> Path:
    """An animated GIF of the image emerging, one frame per step (last frame held longer)."""
    from ..media import save_gif

    frames = denoising_frames(trace, decoder, which)
    if len(frames) < 2:
        raise ConfigError("trace", len(frames), "a denoising GIF needs at least 2 recorded steps")
    return save_gif(frames + [frames[-1]] * 3, path, fps=fps, overwrite=overwrite)
