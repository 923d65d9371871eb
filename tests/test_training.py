"""LoRA training on the tiny models: it learns, resumes exactly, writes its layout, refuses bad input.
What both families share runs on both (the `family` fixture); what only SDXL has (both encoders and
the pooled embedding conditioning it as they condition generation, each sample's time ids, the
family's buckets, v-prediction targets with min-SNR, the second text encoder) runs on `tiny-sdxl`
beside its siblings."""

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


XL_WIDE = (96, 64)  # xl_data's non-square picture: its bucket at 64 px is 80x48, cut 2 px from the top


def _make_xl_images(folder: Path, sizes=((64, 64), (64, 64), XL_WIDE)) -> Path:
    """tiny-sdxl's dataset: two squares and a wide picture, three pictures in two buckets at 64 px."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        arr = np.full((h, w, 3), 40, dtype=np.uint8)
        arr[h // 5:h // 5 + 30, 10 + 5 * i:40 + 5 * i] = (200, 60 * i, 50)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def xl_data(tmp_path: Path) -> Path:
    folder = _make_xl_images(tmp_path / "xl_data")
    (folder / "img0.txt").write_text("sks girl in a red coat\n")
    return folder


def _xl_size(path: Path) -> tuple[int, int]:
    """The size xl_data's pictures train at (their buckets at 64 px)."""
    return (80, 48) if path.name == "img2.png" else (64, 64)


def _xl_config(tmp_path: Path, data: Path, **overrides) -> LoraTrainingConfig:
    """A tiny-sdxl run: two steps of one picture each, in the family's buckets."""
    return _config(tmp_path, data, **{**dict(model="tiny-sdxl", name="xl", max_train_steps=2, batch_size=1,
                                             crop="buckets"), **overrides})


def _weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _state(model) -> dict:
    """A model's weights by their plain names (a removed peft adapter leaves its layer wrapped in base_layer)."""
    return {k.replace(".base_layer.", "."): v.detach().clone() for k, v in model.state_dict().items()}


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
                                               "training_config.json", "loss.csv", "validation", "checkpoints",
                                               "identity.json"}
    # The validation pictures, and once the same prompt and seed at LoRA weight 0 (identity's base).
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["base_0.png", "step000002_0.png",
                                                                      "step000004_0.png"]
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


def test_options_together(family, tmp_path, monkeypatch):
    """Buckets, flips, min-SNR, checkpointing, no latent cache, prior preservation (class images
    drawn by the family's pipeline), every text encoder, accumulation, cosine warmup, all in one
    run, each doing its part: every step's loss is the average over its two micro-batches of the
    min-SNR-weighted instance loss plus the weighted class-image loss (written out here from each
    batch's own noise, timesteps and prediction); every batch is encoded afresh from its picture,
    cut to its own aspect bucket and sometimes mirrored, or is a class image; the UNet runs with
    gradient checkpointing on text states (and SDXL's pooled embedding) that carry gradients; each
    text encoder's adapter learned wherever its output reaches the UNet; the warmup ramps the
    learning rate."""
    import torch

    from charstudio.training import load_pixels

    data = _make_images(tmp_path / "wide", n=3, size=(160, 80))
    _make_images(tmp_path / "wide_sq", n=1)
    (tmp_path / "wide_sq" / "img0.png").rename(data / "square.png")
    gamma = 1.0  # low, so that some of the run's 8 timesteps are weighed down (5.0 spares SNRs under 5)
    # seed 1: the flips' coin mirrors two of the four pictures (seed 0 happens to mirror none)
    cfg = _config(tmp_path, data, model=family.model, seed=1, max_train_steps=2, crop="buckets", flip=True,
                  snr_gamma=gamma, gradient_checkpointing=True, cache_latents=False, with_prior_preservation=True,
                  num_class_images=2, validation_inference_steps=2, gradient_accumulation_steps=2,
                  lr_scheduler="cosine", lr_warmup_steps=2, batch_size=1,
                  **{f"train_{name}": True for name in family.text_encoders})
    comps = family.components()
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
        if family.is_sdxl:  # a class image's time ids are its own size, uncropped
            assert call["kwargs"]["added_cond_kwargs"]["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]]
    # Gradient checkpointing in every UNet call; the text states carry gradients (the text encoders train).
    assert all(c["checkpointing"] and c["hidden_grad"] for c in calls)
    if family.is_sdxl:  # and so does the pooled embedding
        assert all(c["kwargs"]["added_cond_kwargs"]["text_embeds"].requires_grad for c in calls)
    kohya = _weights(out / "aiko.safetensors")
    parts = ("te1", "te2") if family.is_sdxl else ("te",)  # kohya's names of the family's text encoders
    assert {k.split("_")[1] for k in kohya} == {"unet", *parts}
    # B starts at zero: each text encoder's adapter learned in every layer whose output reaches the
    # UNet. SD 1.x's UNet reads its encoder's last states: every layer learned. SDXL's reads the
    # first encoder's penultimate states, so that one's last layer never gets a gradient; the
    # second's last layer makes the pooled embedding.
    unreached = {"te1": comps["text_encoder"].config.num_hidden_layers - 1} if family.is_sdxl else {}
    for part in parts:
        up = {k: v for k, v in kohya.items() if k.startswith(f"lora_{part}_") and k.endswith("lora_up.weight")}
        learned = {k for k, v in up.items() if np.abs(v).max() > 0}
        assert learned and learned == {k for k in up if f"_layers_{unreached.get(part)}_" not in k}, part


# ---- SDXL: the objective (epsilon or velocity, min-SNR in both) and the second text encoder ---------


def test_the_loss_target_is_noise_for_epsilon_and_velocity_for_v_prediction():
    import torch
    from diffusers import DDPMScheduler

    from charstudio.models.family import prediction_scheduler_config
    from charstudio.models.tiny import _sd_scheduler
    from charstudio.training.objective import loss_target, min_snr_weights

    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 250, 700, 999])
    base = dict(_sd_scheduler().config)
    eps = DDPMScheduler.from_config(prediction_scheduler_config(base, "epsilon"))
    vpred = DDPMScheduler.from_config(prediction_scheduler_config(base, "v_prediction"))  # zero terminal SNR
    assert loss_target(eps, latents, noise, t) is noise
    a = vpred.alphas_cumprod[t].sqrt()[:, None, None, None]
    s = (1 - vpred.alphas_cumprod[t]).sqrt()[:, None, None, None]
    torch.testing.assert_close(loss_target(vpred, latents, noise, t), a * noise - s * latents)

    snr = (vpred.alphas_cumprod[t] / (1 - vpred.alphas_cumprod[t])).float()
    torch.testing.assert_close(min_snr_weights(vpred, t, 5.0), torch.clamp(snr, max=5.0) / (snr + 1))
    snr_e = (eps.alphas_cumprod[t] / (1 - eps.alphas_cumprod[t])).float()
    torch.testing.assert_close(min_snr_weights(eps, t, 5.0), torch.clamp(snr_e, max=5.0) / snr_e)
    assert vpred.alphas_cumprod[999] == 0  # zero terminal SNR: epsilon weights stay finite there
    assert torch.isfinite(min_snr_weights(DDPMScheduler.from_config({**dict(vpred.config),
                                                                     "prediction_type": "epsilon"}), t, 5.0)).all()


def test_a_v_prediction_sdxl_model_trains_on_velocity_with_min_snr(tmp_path, xl_data, monkeypatch):
    """Each step's loss is min-SNR-weighted (gamma 5, velocity form min(SNR, 5) / (SNR + 1)) mean
    squared error against the velocity alpha_t * noise - sigma_t * latents, written out here from
    the noise and latents the step drew, on the zero-terminal-SNR schedule."""
    import torch

    from charstudio.models.loading import load_components, resolve_model

    comps = load_components(resolve_model("tiny-sdxl"), dtype=torch.float32, prediction_type="v_prediction")
    calls, hook = _spy_training(monkeypatch, comps)
    try:
        records = list(train_lora(_xl_config(tmp_path, xl_data, snr_gamma=5.0), components=comps))
    finally:
        hook.remove()
    assert len(calls) == len(records) == 2  # batch 1, no accumulation: one UNet call a step
    for call, record in zip(calls, records):
        ac = call["alphas_cumprod"][call["t"]].double()
        assert call["alphas_cumprod"][-1] == 0  # zero terminal SNR
        a, s = ac.sqrt().view(-1, 1, 1, 1), (1 - ac).sqrt().view(-1, 1, 1, 1)
        velocity = a * call["noise"].double() - s * call["latents"].double()
        mse = ((call["pred"].double() - velocity) ** 2).mean(dim=(1, 2, 3))
        snr = ac / (1 - ac)
        expected = (torch.clamp(snr, max=5.0) / (snr + 1) * mse).mean().item()
        assert record.loss == pytest.approx(expected, rel=1e-4)
        # and it is neither the unweighted loss nor the loss against the noise
        assert abs(mse.mean().item() - expected) > 1e-3 * expected or snr.item() < 1e-6
        assert ((call["pred"].double() - call["noise"].double()) ** 2).mean().item() != pytest.approx(expected, rel=1e-2)
    info = json.loads((tmp_path / "lora" / "xl" / "training_config.json").read_text())
    assert info["resolved"]["prediction_type"] == "v_prediction"


def test_text_encoders_train_only_when_asked_each_at_its_own_learning_rate(tmp_path, xl_data):
    """SDXL: the second text encoder alone, then both, each at its own rate; the caller's encoders untouched."""
    import torch

    from charstudio.models.tiny import build_tiny_sdxl_components

    comps = build_tiny_sdxl_components()
    fresh = build_tiny_sdxl_components()
    cfg = _xl_config(tmp_path, xl_data, name="te2", train_text_encoder_2=True, text_encoder_2_lr=3e-3,
                     checkpointing_steps=1)
    list(train_lora(cfg, components=comps))
    out = tmp_path / "lora" / "te2"
    assert {k.split(".")[0] for k in _weights(out / "pytorch_lora_weights.safetensors")} == {"unet", "text_encoder_2"}
    kohya = _weights(out / "te2.safetensors")
    assert any(k.startswith("lora_te2_") for k in kohya) and not any(k.startswith("lora_te1_") for k in kohya)
    lrs = [g["lr"] for g in json.loads((list_checkpoints(out)[-1] / "optimizer.json").read_text())["param_groups"]]
    assert lrs == [1e-2, 3e-3]
    for name in ("text_encoder", "text_encoder_2"):  # the caller's base weights are as they came
        assert not getattr(comps[name], "peft_config", None)
        after = _state(comps[name])
        for key, value in fresh[name].state_dict().items():
            assert torch.equal(after[key], value), (name, key)

    cfg = _xl_config(tmp_path, xl_data, name="both", train_text_encoder=True, text_encoder_lr=2e-3,
                     train_text_encoder_2=True, text_encoder_2_lr=3e-3, checkpointing_steps=1, max_train_steps=1)
    list(train_lora(cfg, components=comps))
    lrs = [g["lr"] for g in json.loads((list_checkpoints(tmp_path / "lora" / "both")[-1] / "optimizer.json")
                                       .read_text())["param_groups"]]
    assert lrs == [1e-2, 2e-3, 3e-3]
    assert _xl_config(tmp_path, xl_data, train_text_encoder=True, text_encoder_lr=2e-3) \
        .learning_rate_of("text_encoder_2") == 2e-3  # the second follows the first unless given


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

    studio = family.studio()
    before = {n: _state(studio.components[n]) for n in family.text_encoders}
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
        after = _state(studio.components[name])
        assert after.keys() == weights.keys() and all(torch.equal(after[k], weights[k]) for k in weights), name

    def draw():
        return np.asarray(studio.generate("a picture of sks person", seed=3, num_inference_steps=2, width=64,
                                          height=64).images[0], dtype=np.float64)

    plain = draw()
    studio.load_lora(out, weight=1.0)
    assert np.abs(draw() - plain).mean() > 0.5  # 0-255 pixels: the adapter changes the picture
    studio.unload_loras()
    assert np.array_equal(draw(), plain)


def test_the_train_app_trains_the_familys_last_text_encoder(family, tmp_path, data):
    """The Train app on a Studio of each family, its control for the family's last text encoder
    ticked (SDXL: the second's): a LoRA with that encoder's part alone, and the before/after pictures."""
    pytest.importorskip("ipywidgets")
    from charstudio import lora
    from charstudio.ui.train import TrainApp

    app = TrainApp(family.studio(), data_dir=str(data), steps=2, output_dir=str(tmp_path / "lora"))
    app.name.value, app.rank.value, app.resolution.value = "xl", 4, 64
    app.validation_steps.value, app.validation_inference_steps.value = 0, 2
    getattr(app, f"train_{family.text_encoders[-1]}").value = True  # SDXL: train_text_encoder_2
    app.start_button.click()
    assert app.wait(300), "the run did not finish"
    assert app.status.level == "ok", app.status.text
    assert (tmp_path / "lora" / "xl" / "xl.safetensors").is_file()
    tensors, _ = lora.read_lora_file(tmp_path / "lora" / "xl" / "xl.safetensors")
    trained = "lora_te2_" if family.is_sdxl else "lora_te_"  # kohya's name of the last text encoder
    assert any(k.startswith(trained) for k in tensors) and not any(k.startswith("lora_te1_") for k in tensors)
    assert app.comparison is not None and len(app.comparison.images) == 3


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


# ---- SDXL: conditioning as generation, plus each sample's time ids; the family's buckets ------------


def test_time_ids_are_the_pictures_size_the_crop_applied_and_the_bucket(tmp_path):
    """A 121x64 picture in a 64x64 bucket: no resize, cut 28 px from the left (the mirrored sample
    29 px, counted in the mirrored picture); 96x64 in 80x48: resized to 80x53, cut 2 px from the top."""
    import torch
    from PIL import Image

    from charstudio.training.data import cover_crop_box, load_pixels, size_conditioning

    assert size_conditioning(121, 64, (64, 64)) == (64, 121, 0, 28, 64, 64)
    assert size_conditioning(121, 64, (64, 64), flipped=True) == (64, 121, 0, 29, 64, 64)
    assert size_conditioning(*XL_WIDE, (80, 48)) == (64, 96, 2, 0, 48, 80)
    assert size_conditioning(64, 130, (48, 80)) == (130, 64, 9, 0, 80, 48)  # tall: resized to 48x98
    # The offsets are the crop load_pixels actually applies, unflipped and mirrored.
    rng = np.random.RandomState(0)
    picture = Image.fromarray(rng.randint(0, 255, (64, 121, 3), dtype=np.uint8))
    picture.save(tmp_path / "wide.png")
    pixels = load_pixels(tmp_path / "wide.png", (64, 64))
    new, _ = cover_crop_box(121, 64, (64, 64))
    for flipped in (False, True):
        _, _, top, left, h, w = size_conditioning(121, 64, (64, 64), flipped=flipped)
        source = picture.resize(new, Image.Resampling.BICUBIC)
        if flipped:
            source = source.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        expected = np.asarray(source.crop((left, top, left + w, top + h)), dtype=np.float32) / 127.5 - 1
        got = (torch.flip(pixels, dims=[2]) if flipped else pixels).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_each_step_conditions_the_unet_as_the_sdxl_pipeline_does(tmp_path, xl_data):
    """In a real run the UNet gets both encoders' penultimate states and the pooled embedding of
    the sample's caption (exactly what generation's encoder makes of it as a prompt), and the
    time ids of the sample's picture and bucket, in the layout of the pipeline's _get_add_time_ids."""
    import torch

    from charstudio.models.family import SDXL
    from charstudio.models.tiny import build_tiny_sdxl_components

    comps = build_tiny_sdxl_components()
    reference = build_tiny_sdxl_components()  # the same weights, never trained
    encoder = SDXL.make_encoder(reference)
    seen = []

    def spy(module, args, kwargs):
        seen.append((args[2] if len(args) > 2 else kwargs["encoder_hidden_states"], kwargs["added_cond_kwargs"]))

    hook = comps["unet"].register_forward_pre_hook(spy, with_kwargs=True)
    try:
        list(train_lora(_xl_config(tmp_path, xl_data, max_train_steps=3), components=comps))
    finally:
        hook.remove()
    assert len(seen) == 3  # batch 1, three pictures in two buckets: one epoch
    pipe = SDXL.build_pipeline("txt2img", {k: reference[k] for k in SDXL.component_names})
    expected = {
        "img0.png": ("sks girl in a red coat", (64, 64, 0, 0, 64, 64)),
        "img1.png": ("a picture of sks person", (64, 64, 0, 0, 64, 64)),
        "img2.png": ("a picture of sks person", (64, 96, 2, 0, 48, 80)),
    }
    recorded = json.loads((tmp_path / "lora" / "xl" / "training_config.json").read_text())
    assert {k: tuple(v) for k, v in recorded["dataset"]["size_conditioning"].items()} == \
        {k: ids for k, (_, ids) in expected.items()}
    prompts = {c: encoder.encode(c, parse_weights=False) for c in {c for c, _ in expected.values()}}
    matched = set()
    for hidden, added in seen:
        time_ids = tuple(int(x) for x in added["time_ids"][0].tolist())
        # the sample is the picture whose time ids and caption these are (img0 and img1 share their ids)
        name = next(n for n, (c, ids) in expected.items() if ids == time_ids and n not in matched
                    and torch.allclose(hidden, prompts[c].prompt_embeds, rtol=1e-5, atol=1e-6))
        matched.add(name)
        caption, ids = expected[name]
        layout = pipe._get_add_time_ids(ids[:2], ids[2:4], ids[4:], dtype=torch.float32,
                                        text_encoder_projection_dim=reference["text_encoder_2"].config.projection_dim)
        assert torch.equal(added["time_ids"], layout)
        torch.testing.assert_close(added["text_embeds"], prompts[caption].pooled_prompt_embeds, rtol=1e-5, atol=1e-6)
        assert hidden.shape[-1] == 32 + 48  # both encoders' penultimate states, side by side
    assert matched == set(expected)


def test_buckets_are_the_familys_trained_sizes():
    from charstudio.models.family import SD1, SDXL
    from charstudio.training import bucket_sizes

    assert bucket_sizes(1024, 32, "buckets", SDXL) == sorted(SDXL.sizes)
    assert set(bucket_sizes(512, 32, "buckets", SDXL)) == {(512, 512), (416, 608), (608, 416), (448, 576),
                                                           (576, 448), (384, 672), (672, 384)}
    # SD 1.x's sizes are not a bucket set (one of its native area): the area buckets as before.
    assert bucket_sizes(64, 16, "buckets", SD1) == bucket_sizes(64, 16, "buckets")
    assert bucket_sizes(1024, 32, "center", SDXL) == [(1024, 1024)]


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


def test_pose_conditioning_trains_through_the_controlnet_with_each_images_pose(family, tmp_path, data, xl_data,
                                                                                 monkeypatch):
    """Every step runs the family's ControlNet on the control images of that step's own pictures
    (SDXL: each cut to its bucket) and feeds its residuals to the UNet; so the poses matter by a
    measured margin: with the same pictures and draws, swapping the poses between pictures changes
    the first step's prediction and loss and the trained adapter."""
    import torch

    from charstudio.pose import list_poses

    if family.is_sdxl:  # three pictures in two buckets, one a step, two steps
        data, configure, size_of, steps, poses = xl_data, _xl_config, _xl_size, 2, list_poses()[:3]
        swapped_poses, loss_margin = poses[1:] + poses[:1], 2e-3  # measured 1.1e-2
    else:  # four squares, two a step, three steps
        configure, size_of, steps, poses = _config, (lambda p: (64, 64)), 3, list_poses()[:4]
        swapped_poses, loss_margin = poses[::-1], 1e-3  # measured 4.9e-3

    def run(name: str, **settings) -> dict:
        return _pose_run(tmp_path, data, monkeypatch, lambda: _pose_sensitive(family.components()), configure,
                         name, max_train_steps=steps, **settings)

    _save_poses(data, poses)
    plain = run("plain")
    posed = run("posed", pose_conditioning=True)
    _check_controls_fed(posed, data, size_of)
    _save_poses(data, swapped_poses)  # the same poses on other pictures
    swapped = run("swapped", pose_conditioning=True)
    _check_controls_fed(swapped, data, size_of)
    assert plain["controlnet"] == [] and all(c["kwargs"].get("down_block_additional_residuals") is None
                                             for c in plain["unet"])
    assert plain["weights"].keys() == posed["weights"].keys()  # a ControlNet adds no weights to the LoRA
    first = [r["unet"][0] for r in (plain, posed, swapped)]
    assert all(torch.equal(first[0][k], f[k]) for f in first for k in ("pixels", "noise", "t"))
    # Same pictures, noise and timesteps, same starting adapter: the first step differs only by the poses.
    pred = [f["pred"] for f in first]

    def moved(a, b):
        return ((a - b).abs().mean() / a.abs().mean()).item()

    assert moved(pred[1], pred[2]) > 0.1  # measured 0.30 (both families)
    assert moved(pred[1], pred[0]) > 0.1  # measured 0.41 (SDXL 0.42): the ControlNet's residuals, against none
    loss = [r["records"][0].loss for r in (plain, posed, swapped)]
    assert abs(loss[1] - loss[2]) > loss_margin * loss[1]
    # and so does what the adapter learns
    assert _relative(posed["weights"], swapped["weights"]) > 0.02  # measured 0.059, SDXL 0.060 (0.072, 0.068 from the plain one)
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


def test_text_encoder_2_options_are_validated(tmp_path, xl_data):
    with pytest.raises(ConfigError, match=r"text_encoder_2_lr=0.0 .*> 0"):
        _xl_config(tmp_path, xl_data, text_encoder_2_lr=0)
    with pytest.raises(ConfigError, match=r"train_text_encoder_2='yes'.*True or False"):
        _xl_config(tmp_path, xl_data, train_text_encoder_2="yes")
    with pytest.raises(ConfigError, match=r"train_text_encoder_2=True .*SD 1.x.*one text encoder"):
        list(train_lora(_xl_config(tmp_path, xl_data, model="tiny", train_text_encoder_2=True)))
    assert not (tmp_path / "lora" / "xl" / "pytorch_lora_weights.safetensors").exists()


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


def test_cli_train_lora_info_and_convert(family, tmp_path, data, capsys):
    """train-lora on each family, with the flags of its last text encoder (SDXL: the second's,
    --train-text-encoder-2 and --text-encoder-2-lr) trained at its own rate; lora-info, lora-convert."""
    from charstudio.cli import main

    out_dir = tmp_path / "lora"
    encoder = family.text_encoders[-1]
    flag = encoder.replace("_", "-")
    argv = ["train-lora", str(data), "--model", family.model, "--name", "cli", "--steps", "2", "--rank", "4",
            "--lr", "1e-3", "--resolution", "64", "--output-dir", str(out_dir), "--validation-images", "0",
            "--checkpoint-steps", "1", f"--train-{flag}", f"--{flag}-lr", "3e-4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "LoRA 'cli'" in printed and "cli.safetensors" in printed
    assert (out_dir / "cli" / "pytorch_lora_weights.safetensors").is_file()
    kohya = _weights(out_dir / "cli" / "cli.safetensors")
    trained = "lora_te2_" if family.is_sdxl else "lora_te_"  # kohya's name of the last text encoder
    assert any(k.startswith(trained) for k in kohya) and not any(k.startswith("lora_te1_") for k in kohya)
    recorded = json.loads((out_dir / "cli" / "training_config.json").read_text())
    assert recorded["config"][f"{encoder}_lr"] == 3e-4
    assert recorded["resolved"]["learning_rates"] == {"unet": 1e-3, encoder: 3e-4}
    assert main(argv) == 2  # an existing LoRA is not overwritten
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train-lora", str(data), "--name", "cli2", "--rank", "0", "--output-dir", str(out_dir)]) == 2
    assert "rank=0 is not valid" in capsys.readouterr().err
    assert main(["train-lora", str(data), "--model", family.model, "--name", "cli3", "--pose-conditioning",
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


def test_sdxl_captions_condition_training_as_prompts_condition_generation():
    """SDXL: cached, uncached and trained (with gradients) encoders all give generation's embeddings
    of a caption as a prompt, long ones (over 77 tokens) whole, a short one padded to its batch."""
    import torch

    from charstudio.models.family import SDXL
    from charstudio.models.tiny import build_tiny_sdxl_components
    from charstudio.training.conditioning import TrainingConditioner

    comps = build_tiny_sdxl_components()
    encoder = SDXL.make_encoder(comps)
    long = "sks girl, " + ", ".join(["red coat"] * 40) + ", blue hat"
    short = "a picture of sks girl"
    chunks = -(-encoder.count_tokens(long) // encoder.chunk_len)
    assert chunks > 2
    expected = [encoder.encode(t, parse_weights=False, min_chunks=chunks) for t in (long, short)]
    for trained, cache in (((), True), ((), False), (("text_encoder", "text_encoder_2"), False)):
        hidden, pooled = TrainingConditioner.for_family(SDXL, comps, trained, cache=cache).encode([long, short])
        assert hidden.shape == (2, chunks * 77, 32 + 48) and hidden.requires_grad == bool(trained)
        for i, e in enumerate(expected):
            torch.testing.assert_close(hidden[i:i + 1], e.prompt_embeds, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(pooled[i:i + 1], e.pooled_prompt_embeds, rtol=1e-5, atol=1e-5)


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
