"""LoRA training behaviour only SDXL has, on `tiny-sdxl`: both encoders and the pooled embedding
condition it as they condition generation, each sample's time ids are its picture's size and crop,
the family's buckets, v-prediction targets with min-SNR, the second text encoder only when asked.
What both families share (resume, its refusals, the caches, a Studio's run and its files) runs on
both in tests/test_training.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from charstudio.errors import ConfigError
from charstudio.training import LoraTrainingConfig, list_checkpoints, train_lora

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only slow them down

WIDE = (96, 64)  # the non-square picture: its bucket at 64 px is 80x48, cut 2 px from the top


def _make_images(folder: Path, sizes=((64, 64), (64, 64), WIDE)) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        arr = np.full((h, w, 3), 40, dtype=np.uint8)
        arr[h // 5:h // 5 + 30, 10 + 5 * i:40 + 5 * i] = (200, 60 * i, 50)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = _make_images(tmp_path / "data")
    (folder / "img0.txt").write_text("sks girl in a red coat\n")
    return folder


def _config(tmp_path: Path, data: Path, **overrides) -> LoraTrainingConfig:
    settings = dict(model="tiny-sdxl", data_dir=str(data), name="xl", output_dir=str(tmp_path / "lora"),
                    max_train_steps=2, rank=4, learning_rate=1e-2, batch_size=1, validation_steps=0,
                    num_validation_images=0, checkpointing_steps=100, resolution=64, crop="buckets")
    settings.update(overrides)
    return LoraTrainingConfig(**settings)


def _weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _components(**kwargs):
    from charstudio.models.tiny import build_tiny_sdxl_components

    return build_tiny_sdxl_components(**kwargs)


def _state(model) -> dict[str, torch.Tensor]:
    """A model's weights by their plain names (a removed peft adapter leaves its layer wrapped in base_layer)."""
    return {k.replace(".base_layer.", "."): v.detach().clone() for k, v in model.state_dict().items()}


# ---- the CLI's SDXL flags ---------------------------------------------------------------------------


def test_the_cli_trains_on_sdxl(tmp_path, data, capsys):
    from charstudio.cli import main

    assert main(["train-lora", str(data), "--name", "x", "--model", "tiny-sdxl", "--steps", "1", "--resolution",
                 "64", "--rank", "4", "--output-dir", str(tmp_path / "lora"), "--validation-images", "0",
                 "--train-text-encoder-2", "--text-encoder-2-lr", "3e-4"]) == 0
    kohya = _weights(tmp_path / "lora" / "x" / "x.safetensors")
    assert any(k.startswith("lora_te2_") for k in kohya) and not any(k.startswith("lora_te1_") for k in kohya)
    recorded = json.loads((tmp_path / "lora" / "x" / "training_config.json").read_text())
    assert recorded["config"]["text_encoder_2_lr"] == 3e-4
    assert recorded["resolved"]["learning_rates"] == {"unet": 1e-4, "text_encoder_2": 3e-4}


# ---- conditioning: as generation, plus each sample's time ids --------------------------------------


def test_time_ids_are_the_pictures_size_the_crop_applied_and_the_bucket(tmp_path):
    """A 121x64 picture in a 64x64 bucket: no resize, cut 28 px from the left (the mirrored sample
    29 px, counted in the mirrored picture); 96x64 in 80x48: resized to 80x53, cut 2 px from the top."""
    from PIL import Image

    from charstudio.training.data import cover_crop_box, load_pixels, size_conditioning

    assert size_conditioning(121, 64, (64, 64)) == (64, 121, 0, 28, 64, 64)
    assert size_conditioning(121, 64, (64, 64), flipped=True) == (64, 121, 0, 29, 64, 64)
    assert size_conditioning(*WIDE, (80, 48)) == (64, 96, 2, 0, 48, 80)
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


def test_each_step_conditions_the_unet_as_the_sdxl_pipeline_does(tmp_path, data):
    """In a real run the UNet gets both encoders' penultimate states and the pooled embedding of
    the sample's caption (exactly what generation's encoder makes of it as a prompt), and the
    time ids of the sample's picture and bucket, in the layout of the pipeline's _get_add_time_ids."""
    from charstudio.models.family import SDXL

    comps = _components()
    reference = _components()  # the same weights, never trained
    encoder = SDXL.make_encoder(reference)
    seen = []

    def spy(module, args, kwargs):
        seen.append((args[2] if len(args) > 2 else kwargs["encoder_hidden_states"], kwargs["added_cond_kwargs"]))

    hook = comps["unet"].register_forward_pre_hook(spy, with_kwargs=True)
    try:
        list(train_lora(_config(tmp_path, data, max_train_steps=3), components=comps))
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


def test_captions_condition_training_as_prompts_condition_generation():
    """Cached, uncached and trained (with gradients) encoders all give generation's embeddings of
    a caption as a prompt, long ones (over 77 tokens) whole, a short one padded to its batch."""
    from charstudio.models.family import SDXL
    from charstudio.training.conditioning import TrainingConditioner

    comps = _components()
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


def test_buckets_are_the_familys_trained_sizes():
    from charstudio.models.family import SD1, SDXL
    from charstudio.training import bucket_sizes

    assert bucket_sizes(1024, 32, "buckets", SDXL) == sorted(SDXL.sizes)
    assert set(bucket_sizes(512, 32, "buckets", SDXL)) == {(512, 512), (416, 608), (608, 416), (448, 576),
                                                           (576, 448), (384, 672), (672, 384)}
    # SD 1.x's sizes are not a bucket set (one of its native area): the area buckets as before.
    assert bucket_sizes(64, 16, "buckets", SD1) == bucket_sizes(64, 16, "buckets")
    assert bucket_sizes(1024, 32, "center", SDXL) == [(1024, 1024)]


# ---- the objective: epsilon or velocity, min-SNR in both -------------------------------------------


def test_the_loss_target_is_noise_for_epsilon_and_velocity_for_v_prediction():
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


def _spy_objective(monkeypatch, unet) -> list[dict]:
    """Per UNet call in training: the clean latents, noise and timesteps it was noised with
    (diffusers' DDPMScheduler.add_noise) and the UNet's prediction."""
    from diffusers import DDPMScheduler

    calls: list[dict] = []
    real = DDPMScheduler.add_noise

    def add_noise(self, latents, noise, t):
        calls.append(dict(latents=latents.detach().clone(), noise=noise.detach().clone(), t=t.clone(),
                          alphas_cumprod=self.alphas_cumprod.clone()))
        return real(self, latents, noise, t)

    monkeypatch.setattr(DDPMScheduler, "add_noise", add_noise)
    hook = unet.register_forward_hook(lambda m, args, out: calls[-1].__setitem__("pred", out.sample.detach().float()))
    return calls, hook


def test_a_v_prediction_sdxl_model_trains_on_velocity_with_min_snr(tmp_path, data, monkeypatch):
    """Each step's loss is min-SNR-weighted (gamma 5, velocity form min(SNR, 5) / (SNR + 1)) mean
    squared error against the velocity alpha_t * noise - sigma_t * latents, written out here from
    the noise and latents the step drew, on the zero-terminal-SNR schedule."""
    from charstudio.models.loading import load_components, resolve_model

    comps = load_components(resolve_model("tiny-sdxl"), dtype=torch.float32, prediction_type="v_prediction")
    calls, hook = _spy_objective(monkeypatch, comps["unet"])
    try:
        records = list(train_lora(_config(tmp_path, data, snr_gamma=5.0), components=comps))
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


# ---- text encoders: only when asked, each at its own learning rate ----------------------------------


def test_text_encoders_train_only_when_asked_each_at_its_own_learning_rate(tmp_path, data):
    comps = _components()
    fresh = _components()
    cfg = _config(tmp_path, data, name="te2", train_text_encoder_2=True, text_encoder_2_lr=3e-3, checkpointing_steps=1)
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

    cfg = _config(tmp_path, data, name="both", train_text_encoder=True, text_encoder_lr=2e-3,
                  train_text_encoder_2=True, text_encoder_2_lr=3e-3, checkpointing_steps=1, max_train_steps=1)
    list(train_lora(cfg, components=comps))
    lrs = [g["lr"] for g in json.loads((list_checkpoints(tmp_path / "lora" / "both")[-1] / "optimizer.json")
                                       .read_text())["param_groups"]]
    assert lrs == [1e-2, 2e-3, 3e-3]
    assert _config(tmp_path, data, train_text_encoder=True, text_encoder_lr=2e-3).learning_rate_of("text_encoder_2") \
        == 2e-3  # the second follows the first unless given


def test_text_encoder_2_options_are_validated(tmp_path, data):
    with pytest.raises(ConfigError, match=r"text_encoder_2_lr=0.0 .*> 0"):
        _config(tmp_path, data, text_encoder_2_lr=0)
    with pytest.raises(ConfigError, match=r"train_text_encoder_2='yes'.*True or False"):
        _config(tmp_path, data, train_text_encoder_2="yes")
    with pytest.raises(ConfigError, match=r"train_text_encoder_2=True .*SD 1.x.*one text encoder"):
        list(train_lora(_config(tmp_path, data, model="tiny", train_text_encoder_2=True)))
    assert not (tmp_path / "lora" / "xl" / "pytorch_lora_weights.safetensors").exists()


# ---- the rest of the options -----------------------------------------------------------------------


def _save_poses(data: Path, names: list[str]) -> None:
    from PIL import Image

    from charstudio.pose import load_pose, pose_file

    for image, name in zip(sorted(data.glob("*.png")), names):
        with Image.open(image) as im:
            size = im.size
        load_pose(name).fit(*size).save(pose_file(image), overwrite=True)


def test_pose_conditioning_runs_the_sdxl_controlnet_with_each_images_pose(tmp_path, data, monkeypatch):
    """As on SD 1.x: every step runs the SDXL ControlNet on the control image of that step's own
    picture (cut to its bucket) and feeds its residuals to the UNet, and the poses matter by a
    measured margin: swapping them between pictures changes the first step's prediction and loss
    and the trained adapter."""
    from test_training import _check_controls_fed, _pose_run, _pose_sensitive, _relative

    from charstudio.pose import list_poses

    def run(name: str, **settings) -> dict:
        return _pose_run(tmp_path, data, monkeypatch, lambda: _pose_sensitive(_components()), _config, name,
                         **settings)

    def size_of(path: Path) -> tuple[int, int]:
        return (80, 48) if path.name == "img2.png" else (64, 64)

    poses = list_poses()[:3]
    _save_poses(data, poses)
    plain = run("plain")
    posed = run("posed", pose_conditioning=True)
    _check_controls_fed(posed, data, size_of)
    _save_poses(data, poses[1:] + poses[:1])  # the same poses, each on another picture
    swapped = run("swapped", pose_conditioning=True)
    _check_controls_fed(swapped, data, size_of)
    assert plain["controlnet"] == [] and all(c["kwargs"].get("down_block_additional_residuals") is None
                                             for c in plain["unet"])
    assert plain["weights"].keys() == posed["weights"].keys()
    first = [r["unet"][0] for r in (plain, posed, swapped)]
    assert all(torch.equal(first[0][k], f[k]) for f in first for k in ("pixels", "noise", "t"))
    pred = [f["pred"] for f in first]

    def moved(a, b):
        return ((a - b).abs().mean() / a.abs().mean()).item()

    assert moved(pred[1], pred[2]) > 0.1  # measured 0.30
    assert moved(pred[1], pred[0]) > 0.1  # measured 0.42: the ControlNet's residuals, against none
    loss = [r["records"][0].loss for r in (plain, posed, swapped)]
    assert abs(loss[1] - loss[2]) > 2e-3 * loss[1]  # measured 1.1e-2
    assert _relative(posed["weights"], swapped["weights"]) > 0.02  # measured 0.060 (0.068 from the plain one)


def test_options_together_on_sdxl(tmp_path, data, monkeypatch):
    """Flips, min-SNR, gradient checkpointing, no latent cache, prior preservation (class images
    drawn by the SDXL pipeline), both text encoders, accumulation, warmup, all in one run, each
    doing its part: every step's loss is the average over its two micro-batches of the
    min-SNR-weighted instance loss plus the weighted class-image loss (written out here from each
    batch's own noise, timesteps and prediction); each batch is its picture (sometimes mirrored)
    or a class image, encoded afresh; the UNet runs with gradient checkpointing on text states and
    a pooled embedding that carry gradients; both text encoders' adapters learned."""
    from test_training import _min_snr_loss, _spy_training

    from charstudio.training import load_pixels

    gamma = 1.0  # low, so that some of the run's 8 timesteps are weighed down (5.0 spares SNRs under 5)
    # seed 1: the flips' coin mirrors two of the four instance batches (seed 0 happens to mirror none)
    cfg = _config(tmp_path, data, seed=1, flip=True, snr_gamma=gamma, gradient_checkpointing=True,
                  cache_latents=False, with_prior_preservation=True, num_class_images=2,
                  validation_inference_steps=2, train_text_encoder=True, train_text_encoder_2=True,
                  gradient_accumulation_steps=2, lr_scheduler="cosine", lr_warmup_steps=2)
    comps = _components()
    calls, hook = _spy_training(monkeypatch, comps)
    try:
        records = list(train_lora(cfg, components=comps))
    finally:
        hook.remove()
    # 2 steps x 2 micro-batches x (instance + class) batches, each noised once and denoised once.
    assert len(records) == 2 and len(calls) == 8 and all("pred" in c for c in calls)
    instance, classes = calls[0::2], calls[1::2]
    for i, record in enumerate(records):
        micro = [_min_snr_loss(instance[j], gamma) + cfg.prior_loss_weight * _min_snr_loss(classes[j], gamma)
                 for j in (2 * i, 2 * i + 1)]
        assert record.loss == pytest.approx(sum(micro) / 2, rel=1e-4)
    snr = torch.cat([c["alphas_cumprod"][c["t"]] / (1 - c["alphas_cumprod"][c["t"]]) for c in calls])
    assert (snr > gamma).any() and (snr < gamma).any()  # the weights bite in this run
    plain = [sum(((c["pred"] - c["noise"]) ** 2).mean().item() for c in calls[4 * i:4 * i + 4]) / 2 for i in (0, 1)]
    assert [r.loss for r in records] != pytest.approx(plain, rel=1e-2)
    assert [r.lr for r in records] == pytest.approx([cfg.learning_rate / 2, cfg.learning_rate])  # the warmup

    out = tmp_path / "lora" / "xl"
    candidates = {}
    for path in sorted(data.glob("*.png")):
        px = load_pixels(path, (80, 48) if path.name == "img2.png" else (64, 64))
        candidates[(path.name, False)], candidates[(path.name, True)] = px, torch.flip(px, dims=[2])
    seen = []
    for call in instance:
        match = [k for k, px in candidates.items() if px.shape == call["pixels"].shape[1:]
                 and torch.allclose(px, call["pixels"][0], atol=1e-6)]
        assert len(match) == 1, "a batch is one training picture, as it is or mirrored"
        seen.append(match[0])
    assert {name for name, _ in seen} == {"img0.png", "img1.png", "img2.png"}
    assert {flipped for _, flipped in seen} == {False, True}
    class_files = sorted((out / "class_images").glob("*.png"))
    assert len(class_files) == 2
    class_px = [load_pixels(p, (64, 64)) for p in class_files]
    for call in classes:
        assert any(torch.allclose(px, call["pixels"][0], atol=1e-6) for px in class_px)
        assert call["kwargs"]["added_cond_kwargs"]["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]]
    # Checkpointing in every UNet call; both encoders' states and the pooled embedding carry gradients.
    assert all(c["checkpointing"] and c["hidden_grad"] for c in calls)
    assert all(c["kwargs"]["added_cond_kwargs"]["text_embeds"].requires_grad for c in calls)
    kohya = _weights(out / "xl.safetensors")
    assert {k.split("_")[1] for k in kohya} == {"unet", "te1", "te2"}
    # B starts at zero: each text encoder's adapter learned in every layer whose output reaches the
    # UNet. The UNet reads the first encoder's penultimate states, so its last layer's adapter never
    # gets a gradient; the second's last layer makes the pooled embedding.
    last = {"te1": comps["text_encoder"].config.num_hidden_layers - 1, "te2": None}
    for part in ("te1", "te2"):
        up = {k: v for k, v in kohya.items() if k.startswith(f"lora_{part}_") and k.endswith("lora_up.weight")}
        learned = {k for k, v in up.items() if np.abs(v).max() > 0}
        assert learned and learned == {k for k in up if f"_layers_{last[part]}_" not in k}, part


def test_the_train_app_trains_on_an_sdxl_studio(tmp_path, data):
    pytest.importorskip("ipywidgets")
    from charstudio import Studio
    from charstudio.ui.train import TrainApp

    app = TrainApp(Studio.from_pretrained("tiny-sdxl", device="cpu"), data_dir=str(data), steps=2,
                   output_dir=str(tmp_path / "lora"))
    app.name.value, app.rank.value, app.resolution.value = "xl", 4, 64
    app.validation_steps.value, app.validation_inference_steps.value = 0, 2
    app.train_text_encoder_2.value = True  # the app's control for SDXL's second encoder
    app.start_button.click()
    assert app.wait(300), "the run did not finish"
    assert app.status.level == "ok", app.status.text
    assert (tmp_path / "lora" / "xl" / "xl.safetensors").is_file()
    from charstudio import lora

    tensors, _ = lora.read_lora_file(tmp_path / "lora" / "xl" / "xl.safetensors")
    assert any(k.startswith("lora_te2_") for k in tensors) and not any(k.startswith("lora_te1_") for k in tensors)
    assert app.comparison is not None and len(app.comparison.images) == 3
