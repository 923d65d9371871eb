"""The `mini` training recipe: runs, exports a loadable diffusers folder, resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from charstudio.mini import train as mini_train
from charstudio.mini.train import MiniRecipe, train_mini

SMALL = dict(evaluate=0, samples=24, vae_steps=2, vae_batch=4, unet_steps=4, unet_batch=4, warmup=2, checkpoint_every=2)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_model(one_thread, tmp_path_factory):
    """The small recipe trained once, shared by the tests that only read its export."""
    root = tmp_path_factory.mktemp("small")
    return train_mini(MiniRecipe(**SMALL), root / "work", root / "model")


def _unet_weights(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_recipe_exports_a_folder_studio_loads(small_model):
    from charstudio import Studio

    out = small_model
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "controlnet"):
        assert (out / part).is_dir()
    report = json.loads((out / "mini_report.json").read_text())
    assert report["recipe"]["unet_steps"] == 4 and len(report["vae_loss"]) == 0 and report["scaling_factor"] > 0
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))  # safetensors only
    studio = Studio.from_pretrained(str(out), device="cpu")
    assert studio.controlnet_source == str(out / "controlnet")  # the folder's own ControlNet
    assert studio.default_size == 64
    result = studio.generate("a girl with long red hair", pose="standing_front", seed=1, num_inference_steps=2)
    assert result.images[0].size == (64, 64)


def test_interrupted_run_resumes_to_the_same_weights(small_model, tmp_path, monkeypatch):
    straight = small_model

    real_save = mini_train._save_state

    def crash_after_unet_step_2(work, state):
        real_save(work, state)
        if state.phase == "unet" and state.step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(mini_train, "_save_state", crash_after_unet_step_2)
    with pytest.raises(KeyboardInterrupt):
        train_mini(MiniRecipe(**SMALL), tmp_path / "b", tmp_path / "model_b")
    assert not (tmp_path / "model_b").exists()  # nothing half-written where the model goes
    saves = []

    def record(work, state):
        saves.append((state.phase, state.step))
        real_save(work, state)

    monkeypatch.setattr(mini_train, "_save_state", record)
    resumed = train_mini(MiniRecipe(**SMALL), tmp_path / "b", tmp_path / "model_b")

    # It picked up at UNet step 2: no VAE steps and no UNet step up to 2 ran again.
    assert ("unet", 4) in saves and not any(phase == "vae" or step in (1, 2) for phase, step in saves)
    # ...and ended where the uninterrupted run did (up to float rounding in CPU kernels).
    a, b = _unet_weights(straight), _unet_weights(resumed)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_mini_controlnet_pools_the_prompt_as_its_unet_does(tmp_path):
    import torch
    from diffusers import ControlNetModel

    from charstudio.mini.architecture import build_mini_components

    comps = build_mini_components()
    unet, controlnet = comps["unet"], comps["controlnet"]
    assert comps["scheduler"].config.prediction_type == "v_prediction"
    assert unet.config.addition_embed_type == "text" == controlnet.config.addition_embed_type
    prompt = torch.randn(2, 40, unet.config.cross_attention_dim)
    with torch.no_grad():
        want = unet.add_embedding(prompt)
        assert torch.allclose(controlnet.add_embedding(prompt), want)
        controlnet.save_pretrained(tmp_path / "cn")  # ...and so does the copy read back from disk
        assert torch.allclose(ControlNetModel.from_pretrained(tmp_path / "cn").add_embedding(prompt), want)


def test_vae_strokes_overdraw_a_share_of_pictures_in_colours_the_world_never_uses():
    import numpy as np
    from PIL import Image

    from charstudio.mini.world import random_character, render

    images = np.stack([np.asarray(render(*random_character(i, 64))) for i in range(64)])
    out = mini_train.add_strokes(images, np.random.default_rng(0), 0.5)
    again = mini_train.add_strokes(images, np.random.default_rng(0), 0.5)
    assert np.array_equal(out, again)  # the recipe's seed decides the strokes, so runs repeat
    assert out.dtype == images.dtype and out.shape == images.shape
    changed = np.array([not np.array_equal(a, b) for a, b in zip(out, images)])
    assert 0.3 <= changed.mean() <= 0.7  # about half the batch
    assert all(np.array_equal(a, b) for a, b in zip(out[~changed], images[~changed]))  # the rest untouched
    # the strokes come in every hue, orange included (the held-out scarf's colour, which the
    # world never uses as a colour of its own)
    hsv = np.stack([np.asarray(Image.fromarray(im).convert("HSV")) for im in out]).astype(float)
    new = (out != images).any(axis=-1) & (hsv[..., 1] > 0.6 * 255) & (hsv[..., 2] > 0.6 * 255)
    hues = hsv[..., 0][new] * 360 / 255
    assert len(np.unique(np.floor(hues / 30))) >= 10
    assert ((hues >= 20) & (hues <= 40)).sum() >= 10
    assert np.array_equal(mini_train.add_strokes(images, np.random.default_rng(1), 0.0), images)


def test_recipe_at_128_px_exports_a_128_px_model(tmp_path):
    from charstudio import Studio

    out = train_mini(MiniRecipe(**{**SMALL, "size": 128}), tmp_path / "work", tmp_path / "model")
    studio = Studio.from_pretrained(str(out), device="cpu")
    assert studio.default_size == 128
    image = studio.generate("a boy with short blue hair", pose="waving", seed=1, num_inference_steps=2).images[0]
    assert image.size == (128, 128)


def test_fine_tuning_stage_starts_from_an_exported_model_and_keeps_its_lineage(small_model, tmp_path):
    first = small_model
    stage = dict(SMALL, seed=1, init_from=str(first))

    # Zero UNet steps: the exported weights are exactly the starting ones, and the VAE is kept.
    same = train_mini(MiniRecipe(**{**stage, "unet_steps": 0}), tmp_path / "b", tmp_path / "same")
    for part in ("unet", "vae", "controlnet"):
        a = load_file(str(first / part / "diffusion_pytorch_model.safetensors"))
        b = load_file(str(same / part / "diffusion_pytorch_model.safetensors"))
        assert all(bool((a[k] == b[k]).all()) for k in a), part

    # Two steps (with the figure-weighted loss): the UNet moves on from there, the VAE does not train.
    tuned = train_mini(MiniRecipe(**{**stage, "unet_foreground_weight": 4.0}), tmp_path / "c", tmp_path / "tuned")
    a, b = _unet_weights(first), _unet_weights(tuned)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > 1e-4
    vae_a = load_file(str(first / "vae" / "diffusion_pytorch_model.safetensors"))
    vae_b = load_file(str(tuned / "vae" / "diffusion_pytorch_model.safetensors"))
    assert all(bool((vae_a[k] == vae_b[k]).all()) for k in vae_a)
    report = json.loads((tuned / "mini_report.json").read_text())
    first_report = json.loads((first / "mini_report.json").read_text())
    assert report["init"]["from"] == str(first) and report["init"]["recipe"] == first_report["recipe"]
    for key in ("vae_loss", "unet_loss", "train_seconds", "scaling_factor"):  # the first stage's record
        assert report["init"][key] == first_report[key], key
    assert report["vae_loss"] == [] and report["scaling_factor"] == first_report["scaling_factor"]


def test_fine_tuning_stage_refuses_a_folder_it_cannot_start_from(small_model, tmp_path):
    from charstudio.errors import ConfigError

    with pytest.raises(ConfigError, match="init_from=.*lacks vae/diffusion_pytorch_model.safetensors"):
        train_mini(MiniRecipe(**SMALL, init_from=str(tmp_path / "nothing")), tmp_path / "w", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    first = small_model
    for size in (96, 32):  # a stage may only draw the world larger, by a whole factor
        with pytest.raises(ConfigError, match=f"size={size} .*trained at \\(64\\) or a multiple"):
            train_mini(MiniRecipe(**{**SMALL, "size": size}, init_from=str(first)), tmp_path / f"w{size}",
                       tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fine_tuning_stage_at_twice_the_size_keeps_the_vae_and_exports_the_new_size(small_model, tmp_path):
    from charstudio import Studio
    from charstudio.schedulers import make_scheduler

    first = small_model
    big = train_mini(MiniRecipe(**{**SMALL, "size": 128, "snr_shift": 4.0}, init_from=str(first)), tmp_path / "b",
                     tmp_path / "big")
    vae_a = load_file(str(first / "vae" / "diffusion_pytorch_model.safetensors"))
    vae_b = load_file(str(big / "vae" / "diffusion_pytorch_model.safetensors"))
    assert all(bool((vae_a[k] == vae_b[k]).all()) for k in vae_a)  # the 64 px VAE carries over as it is
    a, b = _unet_weights(first), _unet_weights(big)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > 1e-4  # the UNet learned the larger latents
    studio = Studio.from_pretrained(str(big), device="cpu")
    assert studio.default_size == 128
    # The shifted schedule travels in the folder, so every sampler the studio offers uses it.
    snr = lambda ab: ab / (1 - ab)  # noqa: E731
    ab_a = Studio.from_pretrained(str(first), device="cpu").components["scheduler"].alphas_cumprod
    ab_b = studio.components["scheduler"].alphas_cumprod
    assert torch.allclose(snr(ab_a) / snr(ab_b), torch.full_like(ab_a, 4.0), rtol=1e-3)
    for name in ("euler", "dpm++2m", "unipc"):
        assert torch.allclose(make_scheduler(name, studio.base_scheduler_config).alphas_cumprod, ab_b), name
    image = studio.generate("a girl with long red hair", pose="standing_front", seed=1, num_inference_steps=2).images[0]
    assert image.size == (128, 128)


def test_snr_shift_divides_the_signal_to_noise_ratio_at_every_step():
    from diffusers import DDIMScheduler

    from charstudio.errors import ConfigError

    base = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    for shift in (1.0, 4.0, 0.5):
        shifted = DDIMScheduler.from_config(base.config, trained_betas=mini_train.shifted_betas(base.alphas_cumprod,
                                                                                                 shift))
        ratio = (base.alphas_cumprod / (1 - base.alphas_cumprod)) / (shifted.alphas_cumprod / (1 - shifted.alphas_cumprod))
        assert torch.allclose(ratio, torch.full_like(ratio, shift), rtol=1e-3), shift
    with pytest.raises(ConfigError, match="snr_shift=0"):
        mini_train.shifted_betas(base.alphas_cumprod, 0)


def test_unet_loss_weight_follows_the_figure_and_keeps_the_scale():
    import numpy as np

    images = np.full((2, 64, 64, 3), 200, np.uint8)
    images[0, 40:64, 0:16] = (30, 40, 200)  # a figure in the bottom-left of picture 0; picture 1 is empty
    w = mini_train._latent_weight(images, 16, 4.0).numpy()[:, 0]
    assert w.shape == (2, 16, 16)
    assert np.allclose(w.mean(axis=(1, 2)), 1.0)
    assert w[0, 12, 1] > 3 * w[0, 2, 12]  # figure cells outweigh background cells
    assert np.allclose(w[1], 1.0)  # nothing to favour: uniform
