"""Single-file SD 1.x checkpoints (A1111 / civitai style) load through charstudio's normal path.

The tiny model is exported to the original LDM key layout (tests/ldm_export.py), written as a
`.safetensors` file, and loaded back with `Studio.from_pretrained(file, config=folder)` (its shapes
are not SD 1.5's, so it needs config=; tests/test_real_shapes.py loads a real-shape file without). Its
pictures must be bit-identical to the tiny model's. The config folder is a *differently seeded*
tiny model saved with its weights, so any component diffusers took from the folder instead of
the file would change the picture.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from ldm_export import CLIP_PREFIX, export_ldm_state_dict, save_ldm_checkpoint

from charstudio import Studio
from charstudio.errors import ModelLoadError

SETTINGS = dict(seed=1234, num_inference_steps=2, width=64, height=64, guidance_scale=7.0,
                negative_prompt="blurry")
PROMPT = "a knight with a red scarf"


def _pipeline_parts(components):
    return {k: components[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}


def _pixels(result):
    return np.asarray(result.images[0])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny model as an LDM single file, plus a config folder from a differently seeded tiny."""
    import torch
    from diffusers import StableDiffusionPipeline

    from charstudio.models.tiny import build_tiny_components

    root = tmp_path_factory.mktemp("single_file")
    tiny = build_tiny_components(seed=0)
    other = build_tiny_components(seed=1)
    # Each part of the folder's model differs, so a part taken from it cannot pass for the file's.
    for name in ("unet", "vae", "text_encoder"):
        theirs = other[name].state_dict()
        assert any(not torch.equal(v, theirs[k]) for k, v in tiny[name].state_dict().items()), name

    config_dir = root / "base_model"
    StableDiffusionPipeline(**_pipeline_parts(other), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(config_dir)
    checkpoint = save_ldm_checkpoint(tiny, root / "anime_finetune_v3.safetensors")
    return dict(root=root, config=str(config_dir), checkpoint=str(checkpoint), tiny=tiny)


@pytest.fixture(scope="module")
def reference_pixels():
    studio = Studio.from_pretrained("tiny", device="cpu", dtype="fp32")
    return _pixels(studio.generate(PROMPT, **SETTINGS))


def _assert_same_weights(studio, tiny):
    import torch

    for name in ("unet", "vae", "text_encoder"):
        got, want = studio.components[name].state_dict(), tiny[name].state_dict()
        assert got.keys() == want.keys(), name
        different = [k for k in want if not torch.equal(got[k], want[k])]
        assert not different, f"{name}: {different[:3]}"


def test_export_uses_the_ldm_layout(files):
    from safetensors import safe_open

    with safe_open(files["checkpoint"], framework="pt") as f:
        keys = set(f.keys())
        vae_q = f.get_slice("first_stage_model.encoder.mid.attn_1.q.weight").get_shape()
    # Landmarks of an original SD 1.x checkpoint, as diffusers' own model detection looks for them.
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in keys
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in keys  # upsampler after a plain level
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in keys
    assert CLIP_PREFIX + "text_model.embeddings.position_embedding.weight" in keys
    assert len(vae_q) == 4  # LDM's VAE attention is 1x1 convolutions
    assert not any(k.startswith(("down_blocks", "unet.", "vae.", "text_encoder.")) for k in keys)


def test_single_file_reproduces_the_tiny_model(files, reference_pixels):
    studio = Studio.from_pretrained(files["checkpoint"], config=files["config"], device="cpu", dtype="fp32")
    _assert_same_weights(studio, files["tiny"])
    result = studio.generate(PROMPT, **SETTINGS)
    assert result.recipes[0].model == files["checkpoint"]
    np.testing.assert_array_equal(_pixels(result), reference_pixels)


def test_a_resized_single_file_without_config_names_the_shapes_and_config(files):
    """Without config= a file is read with SD 1.5's shipped configs; the tiny model's shapes are
    not SD 1.5's, and the error names the first tensor that differs and the way out."""
    with pytest.raises(ModelLoadError) as err:
        Studio.from_pretrained(files["checkpoint"], device="cpu", dtype="fp32")
    msg = str(err.value)
    assert "\n" not in msg
    assert files["checkpoint"] in msg and "config=" in msg and "--config" in msg
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in msg and "expected [77, 768], got [77, 32]" in msg


@pytest.mark.parametrize("case", ["unrelated keys", "no text encoder", "lora"])
def test_file_that_is_not_an_sd1_checkpoint(files, case):
    import torch
    from safetensors.torch import save_file

    if case == "unrelated keys":
        tensors = {"encoder.layer.0.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}
        expected = ["UNet (model.diffusion_model.*)", "encoder.*", "head.*"]
    elif case == "no text encoder":
        # Without this check diffusers would quietly take the text encoder from the config folder.
        tensors = {k: v for k, v in export_ldm_state_dict(files["tiny"]).items() if not k.startswith(CLIP_PREFIX)}
        expected = ["CLIP text encoder (cond_stage_model.transformer.*)"]
    else:
        tensors = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
                   "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}
        expected = ["LoRA", "load_lora"]
    path = files["root"] / f"{case.replace(' ', '_')}.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ModelLoadError) as err:
        Studio.from_pretrained(str(path), config=files["config"], device="cpu", dtype="fp32")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    for part in expected:
        assert part in msg
    if case != "lora":
        assert "A1111/civitai SD 1.x or SDXL checkpoint" in msg  # says what would work


def test_pickled_checkpoint_needs_opt_in_and_then_loads(files):
    import torch

    ckpt = files["root"] / "anime_finetune_v3.ckpt"
    torch.save({"state_dict": export_ldm_state_dict(files["tiny"])}, ckpt)
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        Studio.from_pretrained(str(ckpt), config=files["config"], device="cpu", dtype="fp32")

    studio = Studio.from_pretrained(str(ckpt), config=files["config"], allow_pickle=True, device="cpu", dtype="fp32")
    _assert_same_weights(studio, files["tiny"])  # same weights as the .safetensors, whose pictures match


class _TouchOnUnpickle:
    """Unpickling this runs code (creates a file), the way a malicious checkpoint would."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickled_checkpoint_is_read_with_weights_only(files, tmp_path):
    import torch

    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    marker = tmp_path / "code_ran"
    state = export_ldm_state_dict(files["tiny"])
    ckpt = tmp_path / "payload.ckpt"
    torch.save({"state_dict": state, "callbacks": _TouchOnUnpickle(marker)}, ckpt)
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        Studio.from_pretrained(str(ckpt), config=files["config"], allow_pickle=True, device="cpu", dtype="fp32")
    # diffusers' own reader (used after our check) refuses it too.
    with pytest.raises(OSError):
        load_single_file_checkpoint(str(ckpt))
    assert not marker.exists()


def test_config_only_applies_to_single_files(files):
    with pytest.raises(ModelLoadError, match="only applies to single-file"):
        Studio.from_pretrained("tiny", config=files["config"], device="cpu")
    with pytest.raises(ModelLoadError, match="model_index.json"):
        Studio.from_pretrained(files["checkpoint"], config=str(files["root"]), device="cpu")


def test_cli_config_flag(files, tmp_path, capsys):
    from charstudio.cli import main

    common = ["generate", PROMPT, "--model", files["checkpoint"], "--device", "cpu", "--steps", "1",
              "--width", "64", "--height", "64", "--seed", "5"]
    assert main(common + ["--out", str(tmp_path / "none")]) == 2
    assert "--config" in capsys.readouterr().err
    assert main(common + ["--config", files["config"], "--out", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_train_lora_on_a_single_file_checkpoint(files, tmp_path, capsys):
    """`train-lora --model FILE --config BASE` trains on the file's own weights, offline; the LoRA
    then changes that checkpoint's pictures. A pickled .ckpt needs --allow-pickle here too."""
    import json

    import torch
    from PIL import Image

    from charstudio.cli import main

    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        arr = np.full((64, 64, 3), 40, dtype=np.uint8)
        arr[10:50, 8 + 6 * i:40 + 6 * i] = (220, 50 * i, 60)
        Image.fromarray(arr).save(data / f"img{i}.png")
    common = ["train-lora", str(data), "--name", "aiko", "--output-dir", str(tmp_path / "lora"), "--steps", "3",
              "--rank", "4", "--lr", "5e-2", "--lr-scheduler", "cosine", "--warmup-steps", "1", "--resolution", "64",
              "--batch-size", "2", "--validation-images", "0", "--config", files["config"]]
    assert main(common + ["--model", files["checkpoint"]]) == 0
    record = json.loads((tmp_path / "lora" / "aiko" / "training_config.json").read_text())["config"]
    assert (record["model"], record["model_config"]) == (files["checkpoint"], files["config"])
    assert (record["lr_scheduler"], record["lr_warmup_steps"]) == ("cosine", 1)

    studio = Studio.from_pretrained(files["checkpoint"], config=files["config"], device="cpu", dtype="fp32")
    plain = _pixels(studio.generate(PROMPT, **SETTINGS))
    studio.load_lora(tmp_path / "lora" / "aiko")
    assert np.abs(_pixels(studio.generate(PROMPT, **SETTINGS)).astype(int) - plain).max() > 0

    ckpt = files["root"] / "train_me.ckpt"
    torch.save({"state_dict": export_ldm_state_dict(files["tiny"])}, ckpt)
    capsys.readouterr()
    pickled = common[:3] + ["pickled"] + common[4:] + ["--model", str(ckpt)]
    assert main(pickled) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert not (tmp_path / "lora" / "pickled").exists()
    assert main(pickled + ["--allow-pickle"]) == 0
    assert (tmp_path / "lora" / "pickled" / "pytorch_lora_weights.safetensors").is_file()
