"""LoRA training on the tiny model: it learns, resumes exactly, writes its layout, refuses bad input."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charstudio.errors import ConfigError, OutputError
from charstudio.training import LoraTrainingConfig, list_checkpoints, train_lora

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only slow them down

REPO = Path(__file__).resolve().parents[1]


def _make_images(folder: Path, n: int = 4, size: tuple[int, int] = (96, 96)) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    for i in range(n):
        arr = np.full((h, w, 3), 40, dtype=np.uint8)
        arr[h // 5:h // 5 + 40, 20 + 5 * i:60 + 5 * i] = (200, 60 * i, 50)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = _make_images(tmp_path / "data")
    (folder / "img0.txt").write_text("sks person in a red coat\n")
    return folder


def _config(tmp_path: Path, data: Path, **overrides) -> LoraTrainingConfig:
    # 64 px (a quarter of tiny's native pixels) keeps the suite fast; one test checks the native default.
    settings = dict(model="tiny", data_dir=str(data), name="aiko", output_dir=str(tmp_path / "lora"), max_train_steps=6, rank=4,
                    alpha=4.0, learning_rate=1e-2, batch_size=2, validation_steps=0, num_validation_images=0,
                    checkpointing_steps=100, resolution=64)
    settings.update(overrides)
    return LoraTrainingConfig(**settings)


def _weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _fixed_noise_loss(data: Path, lora_dir: Path | None, size: int = 64) -> float:
    """Denoising loss of the tiny UNet on the training images with fixed noise and timesteps."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from charstudio import lora
    from charstudio.models.tiny import build_tiny_components
    from charstudio.training import load_pixels

    c = build_tiny_components()
    pipe = StableDiffusionPipeline(**{k: c[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if lora_dir is not None:
        lora.load_lora(pipe, lora_dir)
    pixels = torch.stack([load_pixels(p, (size, size)) for p in sorted(data.glob("*.png"))])
    with torch.no_grad():
        latents = (c["vae"].encode(pixels).latent_dist.mean * c["vae"].config.scaling_factor).repeat(6, 1, 1, 1)
        g = torch.Generator().manual_seed(123)
        noise = torch.randn(latents.shape, generator=g)
        t = torch.linspace(0, 999, latents.shape[0]).long()
        noisy = DDPMScheduler.from_config(c["scheduler"].config).add_noise(latents, noise, t)
        ids = c["tokenizer"](["a picture of sks person"] * len(t), padding="max_length", max_length=77,
                             return_tensors="pt").input_ids
        pred = c["unet"](noisy, t, c["text_encoder"](ids)[0]).sample
    return torch.nn.functional.mse_loss(pred, noise).item()


def test_a_few_dozen_steps_overfit_the_dataset(tmp_path, data):
    # Tiny's native 128 px: at 64 px it learns too slowly for a clear result in a few dozen steps.
    records = list(train_lora(_config(tmp_path, data, max_train_steps=24, learning_rate=2e-2, resolution=128)))
    assert [r.step for r in records] == list(range(1, 25))
    assert records[-1].done and not any(r.done for r in records[:-1])
    losses = [r.loss for r in records]
    assert np.mean(losses[-8:]) < 0.85 * np.mean(losses[:8])
    before = _fixed_noise_loss(data, None, 128)
    after = _fixed_noise_loss(data, tmp_path / "lora" / "aiko", 128)
    assert after < 0.8 * before, (before, after)


def test_output_layout_and_records(tmp_path, data):
    cfg = _config(tmp_path, data, max_train_steps=4, validation_steps=2, num_validation_images=1,
                  validation_inference_steps=2, checkpointing_steps=2, checkpoints_total_limit=1, resolution=None)
    records = list(train_lora(cfg))
    out = tmp_path / "lora" / "aiko"
    assert {p.name for p in out.iterdir()} == {"pytorch_lora_weights.safetensors", "aiko.safetensors",
                                               "training_config.json", "loss.csv", "validation", "checkpoints"}
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step000002_0.png", "step000004_0.png"]
    assert [len(r.images) for r in records] == [0, 1, 0, 1]
    assert [r.checkpoint.name if r.checkpoint else None for r in records] == \
        [None, "checkpoint-000002", None, "checkpoint-000004"]
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-000004"]  # the limit pruned the older one
    assert set(records[-1].files) >= {"diffusers", "kohya", "loss_csv", "config"}
    assert all(r.elapsed > 0 for r in records) and records[-1].elapsed >= records[0].elapsed

    with open(out / "loss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["loss"]) for r in rows] == pytest.approx([r.loss for r in records], rel=1e-5)
    info = json.loads((out / "training_config.json").read_text())
    assert info["config"]["rank"] == 4 and info["resolved"]["resolution"] == 128  # tiny's native size
    assert info["resolved"]["optimizer"] in ("adamw", "adamw8bit")
    assert info["dataset"]["captions_from_files"] == 1
    assert LoraTrainingConfig.from_dict(info["config"]) == cfg
    # Validation speaks the data's words: the first caption file, unless a prompt is given.
    assert info["resolved"]["validation_prompt"] == "sks person in a red coat"
    from charstudio.training import scan_dataset

    report = scan_dataset(data, instance_prompt=cfg.resolved_instance_prompt, min_size=32)
    assert [e.caption_from_file for e in report.examples] == [True, False, False, False]
    assert _config(tmp_path, data, validation_prompt="sks, smiling").resolved_validation_prompt(report) == "sks, smiling"
    assert cfg.resolved_validation_prompt() == "a picture of sks person"  # no captions known


def _last_encoder_trained(family) -> dict:
    """The setting that trains the family's last text encoder (SD 1.x's only one, SDXL's second)."""
    return {"train_text_encoder_2" if family.is_sdxl else "train_text_encoder": True}


def test_stop_and_resume_gives_the_same_weights(family, tmp_path, data):
    """Ctrl-C after a checkpoint, then resume=True: the same weights (the UNet's and a text
    encoder's: SDXL's second), losses and files as a run never stopped, flips and batches of two."""
    settings = dict(model=family.model, max_train_steps=4, checkpointing_steps=2, flip=True, batch_size=2,
                    **_last_encoder_trained(family))
    encoder = family.text_encoders[-1] + "."
    list(train_lora(_config(tmp_path, data, name="straight", **settings)))

    # Interrupt at step 3, after the checkpoint at step 2, as Ctrl-C would.
    gen = train_lora(_config(tmp_path, data, name="broken", **settings))
    for record in gen:
        if record.step == 3:
            with pytest.raises(KeyboardInterrupt):
                gen.throw(KeyboardInterrupt)
            break
    out = tmp_path / "lora" / "broken"
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-000002"]
    assert not (out / "pytorch_lora_weights.safetensors").exists()
    # The surviving checkpoint is a loadable LoRA in its own right, the text encoder's part with it.
    from charstudio import lora
    info = lora.inspect_lora(list_checkpoints(out)[-1])
    assert (info.format, info.rank) == ("diffusers", 4)
    assert any(k.startswith(encoder) for k in _weights(list_checkpoints(out)[-1] / "pytorch_lora_weights.safetensors"))
    # A half-written checkpoint (a crash mid-save) must be ignored by resume.
    (out / "checkpoints" / ".tmp-checkpoint-000004-1").mkdir()

    resumed = list(train_lora(_config(tmp_path, data, name="broken", resume=True, **settings)))
    assert [r.step for r in resumed] == [3, 4]
    a = _weights(tmp_path / "lora" / "straight" / "pytorch_lora_weights.safetensors")
    b = _weights(out / "pytorch_lora_weights.safetensors")
    assert set(a) == set(b) and len(a) > 0 and any(k.startswith(encoder) for k in a)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    with open(tmp_path / "lora" / "straight" / "loss.csv") as fa, open(out / "loss.csv") as fb:
        assert [r[:3] for r in csv.reader(fa)] == [r[:3] for r in csv.reader(fb)]


def test_resume_from_the_final_checkpoint_rewrites_lost_outputs(tmp_path, data):
    list(train_lora(_config(tmp_path, data, max_train_steps=2)))
    out = tmp_path / "lora" / "aiko"
    before = _weights(out / "pytorch_lora_weights.safetensors")
    for name in ("pytorch_lora_weights.safetensors", "aiko.safetensors"):  # as if it died while saving
        (out / name).unlink()
    records = list(train_lora(_config(tmp_path, data, max_train_steps=2, resume=True)))
    assert [(r.step, r.done) for r in records] == [(2, True)]
    after = _weights(out / "pytorch_lora_weights.safetensors")
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    assert (out / "aiko.safetensors").is_file()


def test_resume_refuses_other_adapter_settings_or_base_model(family, tmp_path, data):
    import torch

    from charstudio.pose import list_poses
    from charstudio.training import model_fingerprint

    _save_poses(data, list_poses()[:4])  # so that pose_conditioning=True gets as far as the checkpoint
    gen = train_lora(_config(tmp_path, data, model=family.model, max_train_steps=4, checkpointing_steps=2))
    for record in gen:
        if record.step == 2:
            gen.close()
            break

    def resume(components=None, **settings):
        return list(train_lora(_config(tmp_path, data, model=family.model, max_train_steps=4, resume=True,
                                       **settings), components=components))

    with pytest.raises(ConfigError, match=r"resume=.*different rank.*rank=4.*8"):
        resume(rank=8)
    # A checkpoint without a text encoder's adapter (SDXL: the second's) continues only as such.
    flag = next(iter(_last_encoder_trained(family)))
    with pytest.raises(ConfigError, match=fr"resume=.*different {flag}.*False.*True"):
        resume(**_last_encoder_trained(family))
    # Checkpoints trained without poses, on attention layers only, continue only as such.
    with pytest.raises(ConfigError, match=r"different pose_conditioning.*False.*True"):
        resume(pose_conditioning=True)
    with pytest.raises(ConfigError, match=r"different lora_layers.*'attention'.*'transformer'"):
        resume(lora_layers="transformer")
    # What the LoRA learns to answer: another trigger word, or another caption for uncaptioned images.
    with pytest.raises(ConfigError, match=r"different trigger_word.*'sks'.*'zorbi'"):
        resume(trigger_word="zorbi")
    with pytest.raises(ConfigError, match=r"different instance_prompt.*'a picture of sks person'.*'a picture of sks girl'"):
        resume(class_word="girl")
    other_model = family.components(seed=5)  # same architecture, other weights
    with pytest.raises(ConfigError, match="different base model"):
        resume(components=other_model)
    assert not getattr(other_model["unet"], "peft_config", None), "the caller's model must be left clean"
    # A base model whose last text encoder alone differs (SDXL: the second) is another base model too.
    other = family.components()
    with torch.no_grad():
        other[family.text_encoders[-1]].get_input_embeddings().weight[:16] += 0.01
    with pytest.raises(ConfigError, match="different base model"):
        resume(components=other)
    base = family.components()
    assert model_fingerprint(*(base[n] for n in ("unet", *family.text_encoders))) != \
        model_fingerprint(*(other[n] for n in ("unet", *family.text_encoders)))
    # A checkpoint from before the prompts were recorded continues (it is not checked on them).
    state_file = list_checkpoints(tmp_path / "lora" / "aiko")[-1] / "trainer_state.json"
    state = json.loads(state_file.read_text())
    for key in ("trigger_word", "instance_prompt"):
        del state["identity"][key]
    state_file.write_text(json.dumps(state))
    assert resume(trigger_word="zorbi")[-1].step == 4


def test_existing_lora_is_not_overwritten(tmp_path, data):
    list(train_lora(_config(tmp_path, data, max_train_steps=2)))
    path = tmp_path / "lora" / "aiko" / "pytorch_lora_weights.safetensors"
    first = _weights(path)
    with pytest.raises(OutputError, match="overwrite"):
        list(train_lora(_config(tmp_path, data, max_train_steps=2, seed=1)))
    with pytest.raises(OutputError, match="finished LoRA"):
        list(train_lora(_config(tmp_path, data, max_train_steps=3, resume=True)))
    np.testing.assert_array_equal(_weights(path)[next(iter(first))], first[next(iter(first))])
    list(train_lora(_config(tmp_path, data, max_train_steps=2, seed=1, overwrite=True)))
    second = _weights(path)
    assert any(not np.array_equal(first[k], second[k]) for k in first)


def _spy_training(monkeypatch, comps: dict) -> list[dict]:
    """Per noised batch of a training run, in order: the pixels the VAE encoded for it (the run
    must not cache latents), the clean latents, noise and timesteps it was noised with
    (diffusers' DDPMScheduler.add_noise), and what the UNet got and predicted."""
    from diffusers import DDPMScheduler

    calls: list[dict] = []
    encoded: list = []
    real_noise, real_encode = DDPMScheduler.add_noise, comps["vae"].encode

    def encode(pixels, *args, **kwargs):
        encoded.append(pixels.detach().clone())
        return real_encode(pixels, *args, **kwargs)

    def add_noise(self, latents, noise, t):
        calls.append(dict(pixels=encoded.pop() if encoded else None, latents=latents.detach().clone(),
                          noise=noise.detach().clone(), t=t.clone(), alphas_cumprod=self.alphas_cumprod.clone()))
        return real_noise(self, latents, noise, t)

    def seen(module, args, kwargs, out):
        if calls and "pred" not in calls[-1]:  # class images are drawn by a pipeline before training
            hidden = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
            calls[-1].update(pred=out.sample.detach().float(), hidden_grad=hidden.requires_grad,
                             checkpointing=module.is_gradient_checkpointing, kwargs=kwargs)

    monkeypatch.setattr(DDPMScheduler, "add_noise", add_noise)
    monkeypatch.setattr(comps["vae"], "encode", encode)
    hook = comps["unet"].register_forward_hook(seen, with_kwargs=True)
    return calls, hook


def _min_snr_loss(call: dict, gamma: float) -> float:
    """Min-SNR-gamma weighted MSE against the noise (an epsilon model), written out from a call's own draws."""
    import torch

    ac = call["alphas_cumprod"][call["t"]].double()
    snr = ac / (1 - ac)
    mse = ((call["pred"].double() - call["noise"].double()) ** 2).mean(dim=(1, 2, 3))
    return (torch.clamp(snr, max=gamma) / snr * mse).mean().item()


def test_options_together(tmp_path, monkeypatch):
    """Buckets, flips, min-SNR, checkpointing, no latent cache, prior preservation, text encoder,
    accumulation, cosine warmup, all in one run, each doing its part: every step's loss is the
    average over its two micro-batches of the min-SNR-weighted instance loss plus the weighted
    class-image loss (written out here from each batch's own noise, timesteps and prediction);
    every batch is encoded afresh from its picture, cut to its own aspect bucket and sometimes
    mirrored; the UNet runs with gradient checkpointing on text states that carry gradients; the
    text encoder's adapter learned; the warmup ramps the learning rate."""
    import torch

    from charstudio.models.tiny import build_tiny_components
    from charstudio.training import load_pixels

    data = _make_images(tmp_path / "wide", n=3, size=(160, 80))
    _make_images(tmp_path / "wide_sq", n=1)
    (tmp_path / "wide_sq" / "img0.png").rename(data / "square.png")
    gamma = 1.0  # low, so that some of the run's 8 timesteps are weighed down (5.0 spares SNRs under 5)
    # seed 1: the flips' coin mirrors two of the four pictures (seed 0 happens to mirror none)
    cfg = _config(tmp_path, data, seed=1, max_train_steps=2, crop="buckets", flip=True, snr_gamma=gamma,
                  gradient_checkpointing=True, cache_latents=False, with_prior_preservation=True,
                  num_class_images=2, validation_inference_steps=2, train_text_encoder=True,
                  gradient_accumulation_steps=2, lr_scheduler="cosine", lr_warmup_steps=2, batch_size=1)
    comps = build_tiny_components()
    calls, hook = _spy_training(monkeypatch, comps)
    try:
        records = list(train_lora(cfg, components=comps))
    finally:
        hook.remove()
    out = tmp_path / "lora" / "aiko"
    # 2 steps x 2 micro-batches x (instance + class) batches, each noised once and denoised once.
    assert len(records) == 2 and len(calls) == 8 and all("pred" in c for c in calls)
    instance, classes = calls[0::2], calls[1::2]
    for i, record in enumerate(records):
        micro = [_min_snr_loss(instance[j], gamma) + cfg.prior_loss_weight * _min_snr_loss(classes[j], gamma)
                 for j in (2 * i, 2 * i + 1)]
        assert record.loss == pytest.approx(sum(micro) / 2, rel=1e-4)
    # min-SNR weighs down the low-noise draws (SNR over gamma) of this run: its loss is not the plain MSE.
    snr = torch.cat([c["alphas_cumprod"][c["t"]] / (1 - c["alphas_cumprod"][c["t"]]) for c in calls])
    assert (snr > gamma).any() and (snr < gamma).any()
    plain = [sum(((c["pred"] - c["noise"]) ** 2).mean().item() for c in calls[4 * i:4 * i + 4]) / 2 for i in (0, 1)]
    assert [r.loss for r in records] != pytest.approx(plain, rel=1e-2)
    # The warmup ramps the learning rate to its peak (1/2, then 2/2 of it) and the cosine starts from there.
    assert [r.lr for r in records] == pytest.approx([cfg.learning_rate / 2, cfg.learning_rate])

    # No latent cache: each batch is its picture, encoded just before it is noised, at its bucket's
    # size; one epoch shows every picture once, and the flips mirror some of them.
    info = json.loads((out / "training_config.json").read_text())
    buckets = {tuple(b) for b in info["resolved"]["buckets"]}
    wide = next(b for b in buckets if b[0] > b[1])
    assert buckets == {wide, (64, 64)}
    candidates = {}
    for path in sorted(data.glob("*.png")):
        px = load_pixels(path, (64, 64) if path.name == "square.png" else wide)
        candidates[(path.name, False)], candidates[(path.name, True)] = px, torch.flip(px, dims=[2])
    seen = []
    for call in instance:
        assert call["pixels"] is not None and call["pixels"].shape[0] == 1
        match = [k for k, px in candidates.items() if px.shape == call["pixels"].shape[1:]
                 and torch.allclose(px, call["pixels"][0], atol=1e-6)]
        assert len(match) == 1, "a batch is one training picture, as it is or mirrored"
        seen.append(match[0])
        w, h = (64, 64) if match[0][0] == "square.png" else wide
        assert call["latents"].shape[2:] == (h // 8, w // 8)
    assert sorted(name for name, _ in seen) == sorted(p.name for p in data.glob("*.png"))
    assert {flipped for _, flipped in seen} == {False, True}
    # Prior preservation: the class batches are the class images (never mirrored), encoded afresh too.
    class_files = sorted((out / "class_images").glob("*.png"))
    assert len(class_files) == 2
    class_px = [load_pixels(p, (64, 64)) for p in class_files]
    for call in classes:
        assert any(torch.allclose(px, call["pixels"][0], atol=1e-6) for px in class_px)
    # Gradient checkpointing in every UNet call; the text states carry gradients (the text encoder trains).
    assert all(c["checkpointing"] and c["hidden_grad"] for c in calls)
    kohya = _weights(out / "aiko.safetensors")
    assert any(k.startswith("lora_unet_") for k in kohya)
    te_up = [v for k, v in kohya.items() if k.startswith("lora_te_") and k.endswith("lora_up.weight")]
    assert te_up and all(np.abs(v).max() > 0 for v in te_up)  # B starts at zero: the text encoder's adapter learned


def test_cached_and_uncached_latents_train_alike(family, tmp_path, data):
    list(train_lora(_config(tmp_path, data, model=family.model, name="cached", max_train_steps=3, flip=True)))
    list(train_lora(_config(tmp_path, data, model=family.model, name="fresh", max_train_steps=3, flip=True,
                            cache_latents=False)))
    a = _weights(tmp_path / "lora" / "cached" / "pytorch_lora_weights.safetensors")
    b = _weights(tmp_path / "lora" / "fresh" / "pytorch_lora_weights.safetensors")
    # Batched vs one-at-a-time VAE encodes differ in the last float bits, and three steps at lr 1e-2
    # amplify that to ~1e-3 relative in a few elements (seen with OMP_NUM_THREADS=1).
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=5e-3, atol=1e-4, err_msg=key)


def test_cached_latents_and_text_embeddings_give_the_first_steps_loss(family, tmp_path, data):
    """The caches hold exactly what an uncached step computes: one picture per step gives the same
    first-step loss bit for bit. With two, an uncached step encodes both pictures in one VAE call,
    whose float rounding differs from one at a time in the last bits (captions are encoded one at
    a time either way)."""
    from charstudio.training.conditioning import TrainingConditioner

    for batch in (1, 2):
        settings = dict(model=family.model, max_train_steps=1, batch_size=batch, crop="center")
        cached = list(train_lora(_config(tmp_path, data, name=f"cached{batch}", **settings)))
        fresh = list(train_lora(_config(tmp_path, data, name=f"fresh{batch}", cache_latents=False,
                                        cache_text_embeddings=False, **settings)))
        if batch == 1:
            assert cached[0].loss == fresh[0].loss
        else:
            assert cached[0].loss == pytest.approx(fresh[0].loss, rel=1e-5)
    comps = family.components()
    # With the caches, frozen encoders never run after the first encoding (on a GPU they wait in CPU memory).
    encoders = list(family.text_encoders)
    assert TrainingConditioner.for_family(family.family, comps).idle_parts == encoders
    assert TrainingConditioner.for_family(family.family, comps, ["text_encoder"]).idle_parts == encoders[1:]
    assert TrainingConditioner.for_family(family.family, comps, cache=False).idle_parts == []


@pytest.mark.filterwarnings("ignore:.*gives poor pictures")  # 64 px keeps SDXL fast
def test_a_studio_trains_a_unet_only_lora_and_loads_it_back(family, tmp_path):
    """Studio.train_lora (the Train app's path) on each family: UNet only by default, both files
    written (kohya's naming for the family: SDXL's SGM blocks), validation through the family's
    pipeline, the text encoders untouched, and the LoRA changes the picture when loaded back."""
    import torch

    data = _make_images(tmp_path / "data", n=3, size=(64, 64))
    _make_images(tmp_path / "wide", n=1, size=(96, 64)).joinpath("img0.png").rename(data / "wide.png")

    def state(model):  # a model's weights by their plain names (a removed adapter leaves base_layer)
        return {k.replace(".base_layer.", "."): v.detach().clone() for k, v in model.state_dict().items()}

    studio = family.studio()
    before = {n: state(studio.components[n]) for n in family.text_encoders}
    cfg = _config(tmp_path, data, model=family.model, name="xl", max_train_steps=2, batch_size=1, crop="buckets",
                  num_validation_images=1, validation_inference_steps=2)
    records = list(studio.train_lora(cfg))
    out = tmp_path / "lora" / "xl"
    assert [r.step for r in records] == [1, 2] and records[-1].done and len(records[-1].images) == 1
    assert set(records[-1].files) >= {"diffusers", "kohya"} and (out / "validation" / "step000002_0.png").is_file()
    diffusers_file = _weights(out / "pytorch_lora_weights.safetensors")
    assert {k.split(".")[0] for k in diffusers_file} == {"unet"}
    kohya = _weights(out / "xl.safetensors")
    assert all(k.startswith("lora_unet_") for k in kohya)
    blocks = "lora_unet_input_blocks_" if family.is_sdxl else "lora_unet_down_blocks_"
    assert any(k.startswith(blocks) for k in kohya)  # kohya's SDXL (SGM) or SD 1.x (diffusers) block names
    info = json.loads((out / "training_config.json").read_text())
    assert info["resolved"]["family"] == family.name and info["resolved"]["trained_components"] == ["unet"]
    buckets = {tuple(b) for b in info["resolved"]["buckets"]}
    assert (64, 64) in buckets and len(buckets) == 2  # the square pictures' and the wide one's
    if family.is_sdxl:
        assert buckets == {(64, 64), (80, 48)}
    for name, weights in before.items():  # not trained, and left without adapters
        assert not getattr(studio.components[name], "peft_config", None)
        after = state(studio.components[name])
        assert after.keys() == weights.keys() and all(torch.equal(after[k], weights[k]) for k in weights), name

    def draw():
        return np.asarray(studio.generate("a picture of sks person", seed=3, num_inference_steps=2, width=64,
                                          height=64).images[0], dtype=np.float64)

    plain = draw()
    studio.load_lora(out, weight=1.0)
    assert np.abs(draw() - plain).mean() > 0.5  # 0-255 pixels: the adapter changes the picture
    studio.unload_loras()
    assert np.array_equal(draw(), plain)


def test_transformer_lora_layers_adapt_feed_forward_too_and_load_back(tmp_path, data):
    """lora_layers="transformer" also adapts the feed-forward and proj_in/out layers; both files
    (diffusers and kohya) carry them, and loading either gives the same pictures."""
    from charstudio import Studio

    list(train_lora(_config(tmp_path, data, name="attn", max_train_steps=2)))
    list(train_lora(_config(tmp_path, data, name="whole", max_train_steps=2, lora_layers="transformer")))
    attn = _weights(tmp_path / "lora" / "attn" / "pytorch_lora_weights.safetensors")
    whole = _weights(tmp_path / "lora" / "whole" / "pytorch_lora_weights.safetensors")
    assert not any(".ff." in k or "proj_in" in k for k in attn)
    assert any(".ff.net.0.proj." in k for k in whole) and any(".proj_out." in k for k in whole)
    assert set(attn) < set(whole)
    kohya = _weights(tmp_path / "lora" / "whole" / "whole.safetensors")
    assert any("_ff_net_2.lora_down" in k for k in kohya) and any("_proj_in.lora_up" in k for k in kohya)

    studio = Studio.from_pretrained("tiny", device="cpu")
    kwargs = dict(seed=3, num_inference_steps=2, width=64, height=64)

    def draw():
        return np.asarray(studio.generate("a picture of sks person", **kwargs).images[0], dtype=np.float64)

    plain = draw()
    pictures = []
    for path in (tmp_path / "lora" / "whole", tmp_path / "lora" / "whole" / "whole.safetensors"):
        studio.load_lora(path, weight=1.0)
        pictures.append(draw())
        studio.unload_loras()
    assert np.abs(pictures[0] - plain).mean() > 0.5  # 0-255 pixels: the adapter changes the picture
    assert np.abs(pictures[0] - pictures[1]).max() <= 1  # and both files hold the same adapter


# ---- pose conditioning ---------------------------------------------------------------------

def _save_poses(data: Path, names: list[str]) -> None:
    """Give every image in ``data`` (sorted) a library pose, fitted to its size, as NAME.pose.json."""
    from PIL import Image

    from charstudio.pose import load_pose
    from charstudio.pose import pose_file

    for image, name in zip(sorted(data.glob("*.png")), names):
        with Image.open(image) as im:
            size = im.size
        load_pose(name).fit(*size).save(pose_file(image), overwrite=True)


def _spy_controlnet(comps: dict) -> tuple[list[dict], object]:
    """Per ControlNet call: the control images it was given and the residuals it returned."""
    calls: list[dict] = []

    def seen(module, args, kwargs, out):
        cond = args[3] if len(args) > 3 else kwargs["controlnet_cond"]
        calls.append(dict(cond=cond.detach().clone(), down=[d.detach().clone() for d in out[0]],
                          mid=out[1].detach().clone()))

    return calls, comps["controlnet"].register_forward_hook(seen, with_kwargs=True)


def _pose_run(tmp_path, data, monkeypatch, build, configure, name: str, **settings) -> dict:
    """Train ``name`` on freshly built components, spying on the UNet, VAE and ControlNet; the
    run's records, its UNet and ControlNet calls, and its adapter's weights."""
    comps = build()
    unet_calls, unet_hook = _spy_training(monkeypatch, comps)
    net_calls, net_hook = _spy_controlnet(comps)
    try:
        records = list(train_lora(configure(tmp_path, data, name=name, cache_latents=False, **settings),
                                  components=comps))
    finally:
        unet_hook.remove()
        net_hook.remove()
        monkeypatch.undo()
    return dict(records=records, unet=unet_calls, controlnet=net_calls,
                weights=_weights(tmp_path / "lora" / name / "pytorch_lora_weights.safetensors"))


def _check_controls_fed(run: dict, data: Path, size_of) -> None:
    """Each UNet call got the ControlNet's residuals, and the ControlNet got the control image of
    the very pictures in that batch (their NAME.pose.json, as on disk now)."""
    import torch

    from charstudio.training import load_pixels
    from charstudio.training.data import load_controls

    paths = sorted(data.glob("*.png"))
    pictures = {p: load_pixels(p, size_of(p)) for p in paths}
    assert len(run["controlnet"]) == len(run["unet"]) > 0
    for call, net in zip(run["unet"], run["controlnet"]):
        for got, want in zip(call["kwargs"]["down_block_additional_residuals"], net["down"]):
            assert torch.equal(got, want)
        assert torch.equal(call["kwargs"]["mid_block_additional_residual"], net["mid"])
        for row, px in enumerate(call["pixels"]):
            path = next(p for p, q in pictures.items() if q.shape == px.shape and torch.allclose(q, px, atol=1e-6))
            torch.testing.assert_close(net["cond"][row], load_controls(path, size_of(path), False)[False])


def _pose_sensitive(comps: dict) -> dict:
    """A tiny model whose ControlNet reads its control image. tiny's random ControlNet answers
    almost only its biases: swapping the poses of a run moved the first prediction by 4e-5 of
    its size (measured), where a trained one is driven by the pose. With no biases in its
    conditioning embedding and that embedding's output scaled up 10000-fold (to about half the
    size of the latent features it is added to), one pose for another moves it by about a third."""
    import torch

    embedding = comps["controlnet"].controlnet_cond_embedding
    with torch.no_grad():
        for conv in [embedding.conv_in, *embedding.blocks, embedding.conv_out]:
            conv.bias.zero_()
        embedding.conv_out.weight.mul_(1e4)
    return comps


def _relative(a: dict, b: dict) -> float:
    """How far adapter b is from adapter a, relative to a's size (all tensors together)."""
    return float(np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a) / sum((a[k] ** 2).sum() for k in a)))


def test_pose_conditioning_trains_through_the_controlnet_with_each_images_pose(tmp_path, data, monkeypatch):
    """Every step runs the ControlNet on the control images of that step's own pictures and feeds
    its residuals to the UNet; so the poses matter by a measured margin: with the same pictures
    and draws, swapping the poses between pictures changes the first step's prediction and loss
    and the trained adapter."""
    import torch

    from charstudio.models.tiny import build_tiny_components
    from charstudio.pose import list_poses

    def run(name: str, **settings) -> dict:
        return _pose_run(tmp_path, data, monkeypatch, lambda: _pose_sensitive(build_tiny_components()), _config,
                         name, max_train_steps=3, **settings)

    poses = list_poses()[:4]
    _save_poses(data, poses)
    plain = run("plain")
    posed = run("posed", pose_conditioning=True)
    _check_controls_fed(posed, data, lambda p: (64, 64))
    _save_poses(data, poses[::-1])  # the same poses on other pictures
    swapped = run("swapped", pose_conditioning=True)
    _check_controls_fed(swapped, data, lambda p: (64, 64))
    assert plain["controlnet"] == [] and all(c["kwargs"].get("down_block_additional_residuals") is None
                                             for c in plain["unet"])
    assert plain["weights"].keys() == posed["weights"].keys()  # a ControlNet adds no weights to the LoRA
    first = [r["unet"][0] for r in (plain, posed, swapped)]
    assert all(torch.equal(first[0][k], f[k]) for f in first for k in ("pixels", "noise", "t"))
    # Same pictures, noise and timesteps, same starting adapter: the first step differs only by the poses.
    pred = [f["pred"] for f in first]

    def moved(a, b):
        return ((a - b).abs().mean() / a.abs().mean()).item()

    assert moved(pred[1], pred[2]) > 0.1  # measured 0.30
    assert moved(pred[1], pred[0]) > 0.1  # measured 0.41: the ControlNet's residuals, against none
    loss = [r["records"][0].loss for r in (plain, posed, swapped)]
    assert abs(loss[1] - loss[2]) > 1e-3 * loss[1]  # measured 4.9e-3
    # and so does what the adapter learns in three steps
    assert _relative(posed["weights"], swapped["weights"]) > 0.02  # measured 0.059 (0.072 from the plain one)
    info = json.loads((tmp_path / "lora" / "posed" / "training_config.json").read_text())
    assert info["config"]["pose_conditioning"] is True


def test_pose_control_images_are_cropped_and_mirrored_like_their_pictures(tmp_path):
    """A wide picture is centre-cropped to the training square; its control image must be cut the
    same way, and a flipped picture gets the mirrored pose (left and right swapped), not a
    mirrored drawing, because OpenPose colours differ by side."""
    import torch

    from charstudio.pose import load_pose
    from charstudio.pose import pose_file
    from charstudio.training import load_controls, load_pixels

    image = tmp_path / "wide.png"
    pose = load_pose("standing_front").fit(160, 80)
    # The picture is the pose's own drawing, so pixels and control must match after the same crop.
    pose.render().save(image)
    pose.save(pose_file(image))
    pixels = (load_pixels(image, (64, 64)) + 1) / 2
    controls = load_controls(image, (64, 64), flip=True)
    assert controls[False].shape == (3, 64, 64)
    torch.testing.assert_close(controls[False], pixels, atol=1e-6, rtol=0)
    pose.mirror().render().save(tmp_path / "mirrored.png")
    mirrored = (load_pixels(tmp_path / "mirrored.png", (64, 64)) + 1) / 2
    torch.testing.assert_close(controls[True], mirrored, atol=1e-6, rtol=0)
    assert not torch.allclose(controls[True], torch.flip(controls[False], dims=[2]))
    # A pose saved for the same picture at half the size is scaled to it first.
    load_pose("standing_front").fit(80, 40).save(pose_file(image), overwrite=True)
    half = load_controls(image, (64, 64), flip=False)[False]
    assert (half - controls[False]).abs().mean() < 0.01


def test_pose_conditioning_needs_a_pose_beside_every_image(tmp_path, data):
    from charstudio.pose import list_poses

    _save_poses(data, list_poses()[:3])  # four images, three poses
    with pytest.raises(ConfigError, match=r"pose_conditioning=True.*1 of 4 have none.*img3\.pose\.json for img3\.png"):
        list(train_lora(_config(tmp_path, data, pose_conditioning=True)))
    assert not (tmp_path / "lora").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="controlnet=.*pose_conditioning=True"):
        _config(tmp_path, data, controlnet="lllyasviel/control_v11p_sd15_openpose")


# ---- bad input -----------------------------------------------------------------------------


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(ConfigError, match="data_dir=.*no such folder"):
        list(train_lora(_config(tmp_path, tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="data_dir=.*holds no images"):
        list(train_lora(_config(tmp_path, tmp_path / "empty")))


def test_caption_without_image(tmp_path, data):
    (data / "ghost.txt").write_text("sks person")
    with pytest.raises(ConfigError, match="caption file ghost.txt has no image"):
        list(train_lora(_config(tmp_path, data)))


def test_bad_images_are_skipped_with_a_count(tmp_path, data, caplog):
    from PIL import Image

    (data / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.new("RGB", (16, 16)).save(data / "tiny.png")
    good = data / "img1.png"
    (data / "truncated.png").write_bytes(good.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="charstudio.training"):
        records = list(train_lora(_config(tmp_path, data, max_train_steps=1)))
    assert records[-1].done
    assert "skipped 3 of 7 images" in caplog.text
    assert "tiny.png: too small (16x16" in caplog.text
    info = json.loads((tmp_path / "lora" / "aiko" / "training_config.json").read_text())
    assert sorted(name for name, _ in info["dataset"]["skipped"]) == ["corrupt.png", "tiny.png", "truncated.png"]


def test_no_usable_image_left(tmp_path):
    from PIL import Image

    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"garbage")
    Image.new("RGB", (20, 20)).save(folder / "b.png")
    with pytest.raises(ConfigError, match=r"none of its 2 images is usable.*a\.png: unreadable.*b\.png: too small"):
        list(train_lora(_config(tmp_path, folder)))


@pytest.mark.parametrize("field,value,match", [
    ("rank", 0, "rank=0 is not valid"),
    ("rank", -4, "rank=-4 is not valid"),
    ("crop", "random", "crop='random' is not valid: use one of 'center', 'buckets'"),
    ("lora_layers", "all", "lora_layers='all' is not valid: use one of 'attention', 'transformer'"),
    ("name", "../escape", "name="),
    ("resolution", 100, "multiple of 8"),
    ("learning_rate", 0.0, "learning_rate=0.0"),
    ("snr_gamma", -1.0, "snr_gamma"),
    ("mixed_precision", "fp8", "mixed_precision"),
])
def test_config_validation(tmp_path, data, field, value, match):
    with pytest.raises(ConfigError, match=match):
        _config(tmp_path, data, **{field: value})


@pytest.mark.slow
def test_accelerate_launch_two_processes_same_layout(tmp_path, data):
    script = tmp_path / "run_train.py"
    script.write_text(
        "import sys\n"
        "from charstudio.training import LoraTrainingConfig, train_lora\n"
        f"cfg = LoraTrainingConfig(model='tiny', data_dir={str(data)!r}, name='multi', output_dir={str(tmp_path / 'lora')!r},\n"
        "    max_train_steps=2, rank=4, alpha=4.0, batch_size=1, validation_steps=0, num_validation_images=1,\n"
        "    resolution=64,\n"
        "    validation_inference_steps=2, checkpointing_steps=1)\n"
        "for r in train_lora(cfg):\n"
        "    pass\n")
    # accelerate 1.x starts several CPU processes for `--cpu` only through mpirun; without it,
    # `--num_processes 2 --cpu` silently runs one. torchrun (`--multi_gpu`) with ACCELERATE_USE_CPU=1
    # gives real two-process CPU training over gloo, which the num_processes check below confirms.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    multi = tmp_path / "lora" / "multi"

    list(train_lora(_config(tmp_path, data, name="single", max_train_steps=2, batch_size=1,
                            num_validation_images=1, validation_inference_steps=2, checkpointing_steps=1)))
    single = tmp_path / "lora" / "single"

    def layout(root: Path, name: str) -> set[str]:
        return {str(p.relative_to(root)).replace(name, "NAME") for p in root.rglob("*")}

    assert layout(multi, "multi") == layout(single, "single")
    info = json.loads((multi / "training_config.json").read_text())
    assert info["resolved"]["num_processes"] == 2
    a, b = _weights(multi / "pytorch_lora_weights.safetensors"), _weights(single / "pytorch_lora_weights.safetensors")
    assert set(a) == set(b)
    for key in a:
        assert a[key].shape == b[key].shape and np.isfinite(a[key]).all(), key
    # The up-projections start at zero (gaussian init): two steps over two processes moved every one.
    ups = [k for k in a if "lora_B" in k]
    assert ups and all(float(np.abs(a[k]).max()) > 0 for k in ups)
    # Each process drew its own samples, so the result is not the single-process one.
    assert any(not np.array_equal(a[k], b[k]) for k in ups)


def test_cli_train_lora_info_and_convert(tmp_path, data, capsys):
    from charstudio.cli import main

    out_dir = tmp_path / "lora"
    argv = ["train-lora", str(data), "--model", "tiny", "--name", "cli", "--steps", "2", "--rank", "4", "--lr", "1e-3",
            "--output-dir", str(out_dir), "--validation-images", "0", "--checkpoint-steps", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "LoRA 'cli'" in printed and "cli.safetensors" in printed
    assert (out_dir / "cli" / "pytorch_lora_weights.safetensors").is_file()
    assert main(argv) == 2  # an existing LoRA is not overwritten
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train-lora", str(data), "--name", "cli2", "--rank", "0", "--output-dir", str(out_dir)]) == 2
    assert "rank=0 is not valid" in capsys.readouterr().err
    assert main(["train-lora", str(data), "--model", "tiny", "--name", "cli3", "--pose-conditioning",
                 "--output-dir", str(out_dir)]) == 2
    assert "pose_conditioning=True" in capsys.readouterr().err and not (out_dir / "cli3").exists()

    assert main(["lora-info", "cli", "--lora-dir", str(out_dir)]) == 0
    info = capsys.readouterr().out
    assert "format      diffusers" in info and "rank        4" in info
    converted = tmp_path / "k.safetensors"
    assert main(["lora-convert", "cli", str(converted), "--to", "kohya", "--lora-dir", str(out_dir)]) == 0
    assert set(_weights(converted)) == set(_weights(out_dir / "cli" / "cli.safetensors"))


def test_fewer_than_five_images_trains_with_a_warning(tmp_path, caplog):
    import logging

    from PIL import Image

    from charstudio.training import scan_dataset

    data = tmp_path / "few"
    data.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(data / f"img{i}.png")
    with caplog.at_level(logging.WARNING, logger="charstudio.training"):
        report = scan_dataset(data, instance_prompt="a picture of sks person", min_size=32)
    assert len(report.examples) == 2
    assert any("only 2 usable" in r.getMessage() and "5-50" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------
# Overwrite and interrupted writes never lose a finished LoRA (hostile-input issue, class 0)
# --------------------------------------------------------------------------------------------
def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative name -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _finished_lora(tmp_path: Path, data: Path, name: str = "zref") -> tuple[Path, dict[str, bytes]]:
    list(train_lora(_config(tmp_path, data, name=name, max_train_steps=2, checkpointing_steps=1)))
    out = tmp_path / "lora" / name
    (out / "notes.txt").write_text("my notes on this LoRA\n")  # a user's own file in the folder
    return out, _snapshot(out)


def test_a_failing_overwrite_leaves_the_finished_lora_as_it_was(tmp_path, data, capsys):
    from PIL import Image

    from charstudio.cli import main

    out, before = _finished_lora(tmp_path, data)
    assert {"pytorch_lora_weights.safetensors", "zref.safetensors", "loss.csv", "training_config.json",
            "checkpoints/checkpoint-000002/trainer_state.json"} <= set(before)
    unusable = tmp_path / "unusable"
    unusable.mkdir()
    (unusable / "a.png").write_bytes(b"garbage")
    Image.new("RGB", (20, 20)).save(unusable / "b.png")
    base = ["train-lora", "--name", "zref", "--output-dir", str(tmp_path / "lora"), "--overwrite", "--steps", "2",
            "--validation-images", "0"]
    failures = {
        "unknown model": [str(data), "--model", "sd99"],
        "no usable image": [str(unusable), "--model", "tiny"],
        "resolution 4096": [str(data), "--model", "tiny", "--resolution", "4096"],
    }
    for what, args in failures.items():
        assert main(base + args) == 2, what
        err = capsys.readouterr().err
        assert err.strip() and "Traceback" not in err, what
        assert _snapshot(out) == before, f"{what}: the old LoRA changed"
        assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == ["zref"], f"{what}: left a staging folder"


def test_overwrite_replaces_the_old_lora_only_when_the_new_one_is_complete(tmp_path, data):
    from charstudio.lora import list_loras
    from charstudio.training import staging_dir

    out, before = _finished_lora(tmp_path, data)
    (out / "class_images").mkdir()
    (out / "class_images" / "0.png").write_bytes(b"kept")
    # The overwriting run is stopped after its first checkpoint: the old LoRA is untouched.
    gen = train_lora(_config(tmp_path, data, name="zref", max_train_steps=3, checkpointing_steps=1, seed=7,
                             overwrite=True))
    for record in gen:
        if record.step == 2:
            gen.close()
            break
    assert {k: v for k, v in _snapshot(out).items() if not k.startswith("class_images")} == before
    staged = staging_dir(out)
    assert [p.name for p in list_checkpoints(staged)] == ["checkpoint-000001", "checkpoint-000002"]
    assert list_loras(tmp_path / "lora") == ["zref"]  # the staging copy is not a LoRA of its own
    # Resume continues the overwrite; when it completes, the new LoRA replaces the old one whole.
    records = list(train_lora(_config(tmp_path, data, name="zref", max_train_steps=3, checkpointing_steps=1,
                                      seed=7, resume=True)))
    assert [r.step for r in records] == [3] and records[-1].files["diffusers"].parent == out
    assert records[-1].checkpoint == out / "checkpoints" / "checkpoint-000003"
    assert not staged.exists() and sorted(p.name for p in (tmp_path / "lora").iterdir()) == ["zref"]
    after = _snapshot(out)
    assert after["pytorch_lora_weights.safetensors"] != before["pytorch_lora_weights.safetensors"]
    assert "zref.safetensors" in after and after["notes.txt"] == before["notes.txt"]
    assert after["class_images/0.png"] == b"kept"
    # No checkpoint of the old run survives to mix with the new one.
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-000002", "checkpoint-000003"]
    key = "checkpoints/checkpoint-000002/pytorch_lora_weights.safetensors"
    assert after[key] != before[key]
    # The same overwrite run straight through gives the same weights.
    straight = tmp_path / "straight"
    list(train_lora(_config(straight, data, name="zref", max_train_steps=3, checkpointing_steps=1, seed=7)))
    a, b = _weights(straight / "lora" / "zref" / "pytorch_lora_weights.safetensors"), _weights(
        out / "pytorch_lora_weights.safetensors")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_lora_stopped_between_its_final_files_is_unfinished_and_resume_completes_it(tmp_path, data):
    out, before = _finished_lora(tmp_path, data)
    (out / "zref.safetensors").unlink()  # killed after the diffusers file, before the kohya file
    with pytest.raises(OutputError, match=r"final files were not all written.*resume=True.*to complete it"):
        list(train_lora(_config(tmp_path, data, name="zref", max_train_steps=2, checkpointing_steps=1)))
    records = list(train_lora(_config(tmp_path, data, name="zref", max_train_steps=2, checkpointing_steps=1,
                                      resume=True)))
    assert [(r.step, r.done) for r in records] == [(2, True)]
    from safetensors.numpy import load
    # Both files are written again from the same final checkpoint: the same tensors.
    for name in ("pytorch_lora_weights.safetensors", "zref.safetensors"):
        old, new = load(before[name]), _weights(out / name)
        assert set(old) == set(new) and old, name
        for key in old:
            np.testing.assert_array_equal(old[key], new[key], err_msg=f"{name}: {key}")


def test_a_kill_during_the_folder_swap_is_finished_on_the_next_run(tmp_path, data):
    import shutil

    from charstudio.training import staging_dir

    old, before = _finished_lora(tmp_path, data, name="zref")
    new_out, new = _finished_lora(tmp_path / "other", data, name="zref")
    shutil.copytree(old, tmp_path / "original")
    for moved_aside in (False, True):
        # Killed once the new LoRA was complete: before the old folder moved aside (the user's
        # notes still in it), or after (the notes already carried into the new one).
        shutil.rmtree(old, ignore_errors=True)
        shutil.copytree(tmp_path / "original", old)
        shutil.copytree(new_out, staging_dir(old))
        if moved_aside:
            os.replace(old, old.with_name(".zref.replaced"))
        else:
            (staging_dir(old) / "notes.txt").unlink()
        with pytest.raises(OutputError, match="finished LoRA"):
            list(train_lora(_config(tmp_path, data, name="zref", max_train_steps=2, resume=True)))
        assert _snapshot(old) == new, f"moved_aside={moved_aside}"
        assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == ["zref"]
    assert before != new


def test_leftovers_of_a_killed_checkpoint_write_are_cleaned_up(tmp_path, data):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gen = train_lora(_config(tmp_path, data, name="kill", max_train_steps=4, checkpointing_steps=1))
    for record in gen:
        if record.step == 2:
            gen.close()
            break
    root = tmp_path / "lora" / "kill" / "checkpoints"
    (root / f".tmp-checkpoint-000003-{dead.pid}").mkdir()  # killed while writing step 3
    (root / f".tmp-checkpoint-000003-{dead.pid}" / "optimizer.json").write_text("{")
    # Killed while replacing checkpoint 2: the complete old copy sits aside, the new one not yet in.
    os.replace(root / "checkpoint-000002", root / f".old-checkpoint-000002-{dead.pid}")
    records = list(train_lora(_config(tmp_path, data, name="kill", max_train_steps=4, checkpointing_steps=1,
                                      resume=True)))
    assert [r.step for r in records] == [3, 4]
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-000003", "checkpoint-000004"]


def test_cli_train_lora_defaults_are_the_apis(tmp_path):
    """One set of defaults: train-lora with no options builds exactly LoraTrainingConfig's defaults."""
    from dataclasses import asdict

    from charstudio.cli import build_parser
    from charstudio.cli.train_commands import _config

    args = build_parser().parse_args(["train-lora", str(tmp_path), "--name", "aiko"])
    assert asdict(_config(args)) == asdict(LoraTrainingConfig(data_dir=str(tmp_path), name="aiko"))
    # alpha follows the rank unless given, in the API as on the command line.
    assert LoraTrainingConfig(data_dir=str(tmp_path), name="aiko", rank=4).alpha == 4.0
    args = build_parser().parse_args(["train-lora", str(tmp_path), "--name", "aiko", "--rank", "4"])
    assert _config(args).alpha == 4.0
    assert LoraTrainingConfig(data_dir=str(tmp_path), name="aiko", rank=4, alpha=1).alpha == 1.0


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_captions_over_77_tokens_are_trained_whole_as_generation_encodes_them(tmp_path, data, train_text_encoder):
    """Two datasets whose captions differ only after token 77 train different LoRAs (the words
    past CLIP's window count, as they do when generating); a short caption batches with a long one."""
    from charstudio.conditioning import PromptEncoder
    from charstudio.models.tiny import build_tiny_components

    long_a = "sks person, " + ", ".join(["red coat"] * 40) + ", blue hat"
    long_b = "sks person, " + ", ".join(["red coat"] * 40) + ", green boots"
    encoder = PromptEncoder(*(build_tiny_components(0)[k] for k in ("tokenizer", "text_encoder")))
    assert encoder.count_tokens(long_a) > 2 * encoder.chunk_len
    # The training encoding of a caption is generation's encoding of it as a prompt.
    np.testing.assert_array_equal(encoder.encode_texts([long_a])[0][0].numpy(),
                                  encoder.encode(long_a).prompt_embeds[0].numpy())
    weights = []
    for name, caption in (("a", long_a), ("b", long_b)):
        folder = tmp_path / f"data_{name}"
        folder.mkdir()
        for img in sorted(data.glob("*.png")):
            (folder / img.name).write_bytes(img.read_bytes())
        (folder / "img0.txt").write_text(caption)  # the other images keep the short instance prompt
        list(train_lora(_config(tmp_path, folder, name=f"long_{name}", max_train_steps=3, batch_size=4,
                                train_text_encoder=train_text_encoder)))
        weights.append(_weights(tmp_path / "lora" / f"long_{name}" / "pytorch_lora_weights.safetensors"))
    assert any(not np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_batch_plan_and_class_images_draw_from_streams_no_process_shares():
    """Issue 26 defect 8: the plan was seeded (seed, epoch, 7), which is process 7's step stream."""
    from charstudio.training import class_image_seed, plan_seed, step_seed

    for seed in (0, 1, 42):
        steps = {step_seed(seed, k, p) for k in range(64) for p in range(64)}
        assert not {plan_seed(seed, e) for e in range(64)} & steps
        assert not {class_image_seed(seed, i) for i in range(64)} & steps
        assert not {plan_seed(seed, e) for e in range(64)} & {class_image_seed(seed, i) for i in range(64)}
    assert step_seed(3, 5, 1) != step_seed(3, 5, 0)  # processes draw different samples


@pytest.mark.slow
def test_sigkill_at_three_random_steps_ends_bit_identical(tmp_path, data):
    """`kill -9` of the real command at three random steps (mid-step or mid-checkpoint write,
    wherever it lands), each time resumed with --resume: the LoRA equals an uninterrupted run's."""
    import random
    import signal
    import time

    from safetensors.numpy import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    base = [sys.executable, "-m", "charstudio", "train-lora", str(data), "--model", "tiny", "--steps", "8",
            "--rank", "4", "--resolution", "64", "--batch-size", "2", "--lr", "1e-2", "--checkpoint-steps", "1",
            "--validation-images", "0", "--output-dir", str(tmp_path / "lora")]
    subprocess.run(base + ["--name", "straight"], env=env, check=True, capture_output=True, timeout=300)
    kills = sorted(random.Random(20261203).sample(range(1, 8), 3))
    out = tmp_path / "lora" / "killed"

    def newest() -> int:
        found = list_checkpoints(out)
        return int(found[-1].name.split("-")[1]) if found else 0

    for i, step in enumerate(kills):
        proc = subprocess.Popen(base + ["--name", "killed"] + (["--resume"] if i else []), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while newest() < step:
            assert proc.poll() is None, f"the run ended before step {step}"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert not (out / "pytorch_lora_weights.safetensors").exists()
    done = subprocess.run(base + ["--name", "killed", "--resume"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    a = load_file(str(tmp_path / "lora" / "straight" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert set(a) == set(b) and a
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    with open(tmp_path / "lora" / "straight" / "loss.csv") as fa, open(out / "loss.csv") as fb:
        assert [r[:3] for r in csv.reader(fa)] == [r[:3] for r in csv.reader(fb)]
