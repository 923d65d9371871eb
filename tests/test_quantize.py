"""int8 weights (issue 38, item 5): Studio.from_pretrained(..., quantize="int8") / --quantize int8.

mini in int8 keeps its weights at about a quarter of fp32's and its pictures within a few levels;
LoRAs (ours and LCM-LoRA's layout, which adapts convolutions too) load, change the picture and
unload on int8 layers; recipes record the quantization; tiny-sdxl draws in int8 with its ControlNet.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import pixels

import charstudio
from charstudio import Studio
from charstudio.errors import ConfigError
from charstudio.speed.quantize import is_quantized, quantize_model, weight_bytes

MINI_LORA = Path(charstudio.__file__).parent / "data" / "mini" / "loras" / "zorbi" / "pytorch_lora_weights.safetensors"
KW = dict(seed=3, num_images=3, watermark=False)  # seeds 3, 4, 5 in one call


@pytest.fixture(scope="module")
def minis():
    return Studio.from_pretrained("mini", device="cpu"), Studio.from_pretrained("mini", device="cpu", quantize="int8")


@pytest.fixture(scope="module")
def full_and_int8(minis):
    full, int8 = minis
    return full.generate("aiko", **KW), int8.generate("aiko", **KW)


def test_int8_weights_take_at_most_055_of_fp32_on_mini(minis):
    full, int8 = minis
    assert full.quantize is None and int8.quantize == "int8"
    for part in ("unet", "controlnet"):
        assert not is_quantized(getattr(full, part) if part == "controlnet" else full.components[part])
        a = weight_bytes(full.controlnet if part == "controlnet" else full.components[part])
        b = weight_bytes(int8.controlnet if part == "controlnet" else int8.components[part])
        assert b <= 0.55 * a, (part, a, b)


def test_int8_pictures_stay_within_3_levels_of_mini_and_record_it(minis, full_and_int8):
    full, int8 = full_and_int8
    drifts = [np.abs(pixels(a) - pixels(b)).mean() for a, b in zip(full.images, int8.images)]
    assert len(drifts) == 3 and all(0 < d <= 3 for d in drifts), drifts  # changed, but a level or two
    assert full.recipe.quantize is None and int8.recipe.quantize == "int8"


def test_a_recipe_drawn_in_int8_warns_on_a_full_precision_studio(minis, caplog):
    full_studio, int8 = minis
    recipe = int8.make_config("aiko", seed=1, num_inference_steps=2)
    assert recipe.quantize == "int8" and full_studio.make_config("aiko").quantize is None
    with caplog.at_level(logging.WARNING, logger="charstudio.studio.draw"):
        full_studio.run(recipe)
    assert any("quantize='int8'" in r.getMessage() for r in caplog.records), caplog.text


def _lcm_style_lora(unet, folder):
    """A random LoRA in LCM-LoRA's layout: attention, feed-forward and the ResNets' convolutions."""
    import copy

    from peft import LoraConfig

    from charstudio.lora import save_lora

    model = copy.deepcopy(unet)
    torch.manual_seed(0)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                 target_modules=["to_q", "to_k", "to_v", "to_out.0", "ff.net.2", "conv1", "conv2"]))
    return save_lora(model, None, folder, "lcm_style")["diffusers"]


def test_loras_change_the_int8_picture_and_unloading_restores_it(minis, tmp_path):
    _, int8 = minis
    kw = dict(seed=3, num_inference_steps=8, watermark=False)
    plain = pixels(int8.generate("aiko", **kw).image)
    lcm = _lcm_style_lora(minis[0].components["unet"], tmp_path)
    for source in (MINI_LORA, lcm):
        name = int8.load_lora(str(source))
        with_lora = pixels(int8.generate("aiko", **kw).image)
        assert np.abs(with_lora - plain).mean() > 2, source  # the adapter acts on int8 layers
        with pytest.raises(ConfigError, match="fuse_loras"):  # peft would merge into a temporary copy
            int8.fuse_loras()
        int8.unload_lora(name)
        assert is_quantized(int8.components["unet"])
        assert np.abs(pixels(int8.generate("aiko", **kw).image) - plain).max() <= 1, source


def test_bad_quantize_values_are_clear_errors(capsys):
    from charstudio.cli import main

    with pytest.raises(ConfigError, match=r"quantize='int4'.*int8"):
        Studio.from_pretrained("tiny", device="cpu", quantize="int4")
    with pytest.raises(SystemExit) as stop:
        main(["generate", "a girl", "--model", "tiny", "--quantize", "int4"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--quantize" in err and "int4" in err and "int8" in err
    with pytest.raises(ConfigError, match="quantize"):
        quantize_model(torch.nn.Linear(2, 2), mode="int4")


def test_tiny_sdxl_quantizes_and_draws_with_its_controlnet():
    full = Studio.from_pretrained("tiny-sdxl", device="cpu")
    int8 = Studio.from_pretrained("tiny-sdxl", device="cpu", quantize="int8")
    assert is_quantized(int8.components["unet"]) and is_quantized(int8.controlnet)
    kw = dict(seed=1, pose="t_pose", num_inference_steps=3, watermark=False)
    a, b = pixels(full.generate("a knight", **kw).image), pixels(int8.generate("a knight", **kw).image)
    assert 0 < np.abs(a - b).mean() <= 3


def test_the_low_vram_estimate_counts_int8_weights_at_their_size():
    """SDXL's real shapes in fp16 with their ControlNet (meta device, no memory): full precision
    needs offload on a 12 GB card, int8 fits it."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from charstudio.models.device import LOW_VRAM_SHARE, estimated_gpu_bytes
    from charstudio.models.family import SDXL
    from charstudio.speed.quantize import quantize_parts

    folder = SDXL.config_folder()
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        parts = {"unet": unet, "controlnet": ControlNetModel.from_unet(unet),
                 "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
                 "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
                 "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))}
        for m in parts.values():
            m.to(torch.float16)
    full = estimated_gpu_bytes(parts, 1024)
    quantize_parts(parts, "int8")
    int8 = estimated_gpu_bytes(parts, 1024)
    assert int8 < 12 * 2**30 * LOW_VRAM_SHARE < full
    assert int8 > 0.6 * full  # the int8 weights (buffers) and their scales count: 7.0 of 10.5 GiB


def test_low_vram_offload_and_the_fast_path_keep_the_int8_picture():
    kw = dict(seed=1, pose="t_pose", num_inference_steps=3, watermark=False)
    int8 = Studio.from_pretrained("tiny", device="cpu", quantize="int8")
    ref = pixels(int8.generate("a knight", **kw).image)
    low = Studio.from_pretrained("tiny", device="cpu", quantize="int8", low_vram=True)
    assert low.low_vram and is_quantized(low.components["unet"])
    assert np.abs(pixels(low.generate("a knight", **kw).image) - ref).max() <= 1
    # the fast path leaves q/k/v unfused: a fused copy would be full precision again
    assert not any("fused QKV" in done for done in int8.set_speed("max"))
    assert np.abs(pixels(int8.generate("a knight", **kw).image) - ref).max() <= 1
