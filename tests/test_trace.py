"""Tracing the diffusion process on the tiny model: records, x0, attention maps, plots, previews."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charstudio import trace as tr
from charstudio.errors import ConfigError, OutputError
from charstudio.schedulers import make_scheduler
from helpers import pixels


pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a red cat"


def _settings(scheduler="dpm++2m-karras", steps=3):
    return dict(seed=7, num_inference_steps=steps, scheduler=scheduler, guidance_scale=5.0)


@pytest.mark.parametrize("scheduler", ["euler-a", "euler", "dpm++2m-karras", "ddim", "unipc", "lcm"])
def test_one_record_per_step_with_x0_and_tracing_does_not_change_the_image(tiny_studio, scheduler):
    plain = tiny_studio.generate(PROMPT, **_settings(scheduler))
    trace, result = tiny_studio.trace(PROMPT, attention=(scheduler == "ddim"), **_settings(scheduler))
    assert np.array_equal(pixels(result.image), pixels(plain.image))
    assert len(trace) == 3 and [r.step for r in trace.records] == [0, 1, 2]
    assert trace.timesteps == sorted(trace.timesteps, reverse=True)
    for r in trace.records:
        assert r.pred_x0 is not None and r.pred_x0.shape == r.latents.shape == (1, 4, 16, 16)
        assert r.noise_pred_norm > 0 and np.isfinite(r.sigma) and 0 < r.alpha_bar < 1
    sigmas = [r.sigma for r in trace.records]
    assert sigmas == sorted(sigmas, reverse=True)
    assert result.extras["trace"] is trace


@pytest.mark.parametrize("scheduler", ["dpm++2m-karras", "ddim"])
def test_last_x0_decodes_to_the_final_image(tiny_studio, scheduler):
    # (the watermark off: the final picture is the last x0 decoded, with nothing added)
    trace, result = tiny_studio.trace(PROMPT, attention=False, watermark=False, **_settings(scheduler))
    vae = tiny_studio.components["vae"]
    final = pixels(result.image).astype(float)
    last = np.abs(pixels(tr.decode_latents(trace.records[-1].pred_x0, vae)[0]) - final).mean()
    first = np.abs(pixels(tr.decode_latents(trace.records[0].pred_x0, vae)[0]) - final).mean()
    # DDIM's last step still adds sqrt(1 - alpha_bar[0]) of noise back; solvers that end at
    # sigma=0 return x0 itself.
    assert last < 2.0 and first > 5 * max(last, 0.2)


def test_fallback_x0_formula_matches_what_schedulers_return():
    """The formula used for DPM++/UniPC gives the x0 that DDIM and Euler compute themselves."""
    from charstudio.models.tiny import build_tiny_components

    config = build_tiny_components()["scheduler"].config
    g = torch.Generator().manual_seed(0)
    for name in ("ddim", "euler", "dpm++2m-karras"):
        sched = make_scheduler(name, config)
        sched.set_timesteps(5)
        t = sched.timesteps[1]
        sample, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
        if name == "dpm++2m-karras":
            sched._step_index = 1
            want = sched.convert_model_output(eps, sample=sample)
            sigma, ab = tr.step_noise_level(sched, t, 1)
        else:
            if hasattr(sched, "_init_step_index"):
                sched._init_step_index(t)
            out = sched.step(eps, t, sample)
            want = out.pred_original_sample
            idx = sched.step_index - 1 if getattr(sched, "step_index", None) is not None else None
            sigma, ab = tr.step_noise_level(sched, t, idx)
        got = tr.predicted_x0(sched, eps, sample, sigma, ab)
        assert torch.allclose(got, want, atol=1e-4), name


def test_attention_maps_one_per_token_and_they_sum_to_one(tiny_studio):
    trace, _ = tiny_studio.trace(PROMPT, **_settings())
    att = trace.attention
    assert att.shape == (77, 16, 16) and trace.attention_calls > 0
    assert np.allclose(att.sum(axis=0), 1.0, atol=1e-4) and (att >= 0).all()
    maps = trace.token_maps()
    assert len(maps) == len(trace.tokens) == len(tiny_studio.encoder.tokenize(PROMPT))
    total = sum(maps.values())
    assert (total <= 1 + 1e-5).all()  # the prompt's tokens share attention with BOS/EOS/padding
    red = trace.token_map("red")
    positions = [trace.token_position(j) for j in range(len(trace.tokens))]
    red_tokens = [j for j, t in enumerate(trace.tokens) if t.startswith(("r", "e", "d"))][:3]
    assert np.allclose(red, att[[positions[j] for j in red_tokens]].sum(0), atol=1e-6)
    assert not np.allclose(red, trace.token_map("cat"))


def test_unknown_token_error_lists_the_prompts_tokens(tiny_studio):
    trace, _ = tiny_studio.trace(PROMPT, **_settings(steps=2))
    with pytest.raises(ConfigError) as err:
        trace.token_map("dog")
    message = str(err.value)
    assert "dog" in message and "'red'" in message and "'cat'" in message
    untraced, _ = tiny_studio.trace(PROMPT, attention=False, **_settings(steps=2))
    with pytest.raises(ConfigError, match="attention"):
        untraced.token_map("red")


def test_processors_and_scheduler_are_restored_even_on_error(tiny_studio):
    unet = tiny_studio.components["unet"]
    before = dict(unet.attn_processors)

    def boom(pipe, step, t, kw):
        raise RuntimeError("user callback failed")

    with pytest.raises(RuntimeError, match="user callback failed"):
        tr.trace_run(tiny_studio, PROMPT, callbacks=[boom], **_settings(steps=2))
    after = unet.attn_processors
    assert all(after[k] is before[k] for k in before)
    pipe = tiny_studio.pipeline("txt2img")
    assert "step" not in vars(pipe.scheduler)  # the tracing wrapper is gone
    assert not unet._forward_pre_hooks


def test_plots_and_denoising_gif_save(tiny_studio, tmp_path):
    trace, result = tiny_studio.trace(PROMPT, **_settings())
    vae = tiny_studio.components["vae"]
    paths = [
        tr.plot_filmstrip(trace, tmp_path / "film.png", decoder=vae),
        tr.plot_noise_schedule(trace, tmp_path / "schedule.png"),
        tr.plot_token_heatmaps(trace, tmp_path / "heat.png", words=["red", "cat"]),
        tr.plot_latent_channels(trace, tmp_path / "channels.png"),
    ]
    from PIL import Image, ImageSequence

    for p in paths:
        with Image.open(p) as im:  # a real picture with something drawn on it
            assert im.format == "PNG" and min(im.size) >= 100, p.name
            assert np.asarray(im.convert("L")).std() > 5, f"{p.name} is blank"
    # The filmstrip shows the steps it names: one column per recorded step, at most 8.
    with Image.open(paths[0]) as film:
        assert film.width > film.height
    gif = tr.save_denoising_gif(trace, tmp_path / "denoise.gif", decoder="approx")
    with Image.open(gif) as anim:
        fmt = anim.format
        frames, durations = [], []
        for f in ImageSequence.Iterator(anim):
            frames.append(np.asarray(f.convert("RGB")))
            durations.append(f.info["duration"])
    # One frame per step, the last held as long as four (the GIF writer merges the repeats).
    assert fmt == "GIF" and len(frames) == len(trace.records)
    assert durations[-1] == pytest.approx(4 * durations[0], abs=20)
    expected = tr.denoising_frames(trace, "approx", "pred_x0")
    assert frames[0].shape[:2] == expected[0].size[::-1]
    assert not np.array_equal(frames[0], frames[len(trace.records) - 1])  # the picture changes as it denoises
    with pytest.raises(OutputError):
        tr.plot_noise_schedule(trace, tmp_path / "schedule.png")
    with pytest.raises(ConfigError, match="token"):
        tr.plot_token_heatmaps(trace, tmp_path / "x.png", words=["dog"])
    assert not (tmp_path / "x.png").exists()


def _tiny_taesd():
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    return AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                           num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4).eval()


def test_decoders_full_vae_taesd_and_approx(tiny_studio):
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    full = tr.decode_latents(latents, tiny_studio.components["vae"])[0]
    # The full VAE gives the studio's own picture of these latents (scaling factor applied).
    assert full.size == (128, 128)
    assert np.abs(np.asarray(full, dtype=int) - np.asarray(tiny_studio.decode(latents)[0], dtype=int)).max() <= 1
    taesd = _tiny_taesd()
    fast = tr.decode_latents(latents, taesd)[0]
    with torch.no_grad():
        direct = ((taesd.decode(latents).sample.clamp(-1, 1) + 1) * 127.5).round()[0].permute(1, 2, 0).numpy()
    assert fast.size == (128, 128) and np.array_equal(np.asarray(fast), direct.astype(np.uint8))
    # approx maps each latent cell to one pixel on its own: change one cell, one pixel changes.
    approx = np.asarray(tr.decode_latents(latents, "approx")[0], dtype=int)
    assert approx.shape == (16, 16, 3)
    poked = latents.clone()
    poked[0, :, 5, 9] += 2.0
    changed = np.argwhere((np.asarray(tr.decode_latents(poked, "approx")[0], dtype=int) != approx).any(axis=2))
    assert changed.tolist() == [[5, 9]]
    with pytest.raises(ConfigError, match="decoder"):
        tr.decode_latents(latents, "fast")


def test_live_preview_every_k_steps_without_changing_the_image(tiny_studio):
    seen = []
    preview = tr.LivePreview(lambda step, image: seen.append((step, image.size)), every=2, decoder=_tiny_taesd())
    plain = tiny_studio.generate(PROMPT, **_settings(steps=4))
    with_preview = tiny_studio.generate(PROMPT, callbacks=[preview], **_settings(steps=4))
    assert seen == [(1, (128, 128)), (3, (128, 128))]
    assert np.array_equal(pixels(with_preview.image), pixels(plain.image))
    with pytest.raises(ConfigError, match="every"):
        tr.LivePreview(print, every=0)


def test_trace_maps_attention_over_every_encoder_and_previews_the_familys_latents(family, family_studio, tmp_path):
    """A traced run on each family: cross-attention maps per prompt token over the whole context
    (SDXL: both encoders', 2048 wide, here 64), the image unchanged by tracing, and previews through
    the family's own latent-to-RGB map (TAESD / TAESDXL when cached; offline "auto" falls back to it)."""
    xl, own = family_studio, family.family
    from charstudio.models.family import SD1, SDXL

    other = SD1 if own is SDXL else SDXL
    from charstudio.trace import LivePreview, decode_latents, plot_filmstrip, trace_run

    kw = dict(seed=5, num_inference_steps=3, width=64, height=64)
    shown = []
    trace, result = trace_run(xl, PROMPT, callbacks=[LivePreview(lambda i, im: shown.append(im), every=1)], **kw)
    assert trace.family == family.name and len(trace.records) == 3 and trace.attention is not None
    assert trace.attention.shape[0] >= len(trace.tokens) and trace.attention.shape[1:] == (8, 8)
    assert float(trace.attention.sum(0).mean()) == pytest.approx(1.0, abs=1e-3)
    assert np.array_equal(np.asarray(result.image), np.asarray(xl.generate(PROMPT, **kw).image))
    assert len(shown) == 3 and shown[0].size == (8, 8)
    z = trace.records[-1].pred_x0[:1]
    expected = torch.einsum("bchw,cr->brhw", z.float(), torch.tensor(own.latent_rgb)) + \
        torch.tensor(own.latent_rgb_bias)[None, :, None, None]
    expected = ((expected.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(decode_latents(z, "approx", own)[0]), expected)
    assert np.array_equal(np.asarray(decode_latents(z, "auto", own)[0]), expected)  # no TAESD offline
    assert not np.array_equal(np.asarray(decode_latents(z, "approx", other)[0]), expected)
    assert np.array_equal(np.asarray(shown[-1]), np.asarray(decode_latents(trace.records[-1].latents[:1], "auto", own)[0]))
    assert plot_filmstrip(trace, tmp_path / "strip.png").is_file()
