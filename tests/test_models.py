"""Loading a model of each family (tiny and tiny-sdxl): detected from a diffusers folder or a
single file's keys, sizes bounded by the family's native size, a ControlNet of the other family
refused, the hub presets, SDXL's fp16 VAE, and low-VRAM offloading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from offload_spy import count_offload_hooks, count_tiled_decodes
from charstudio.errors import ConfigError, ModelLoadError

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a girl with long red hair, blue dress"


def test_a_diffusers_folder_is_detected_as_its_family(tmp_path, family, family_studio):
    from charstudio import Studio

    pipe = family.plain_pipeline()
    pipe.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "model_index.json").read_text())["_class_name"] == \
        family.family.pipelines["txt2img"]
    studio = Studio.from_pretrained(str(tmp_path / "model"), device="cpu")
    assert studio.family is family.family and studio.controlnet_source == family.family.openpose_controlnet
    # (the watermark off: it hashes the recipe, whose model names the folder here)
    a = studio.generate(PROMPT, seed=4, num_inference_steps=2, width=64, height=64, watermark=False)
    b = family_studio.generate(PROMPT, seed=4, num_inference_steps=2, width=64, height=64, watermark=False)
    # The same weights; a tensor read back from a file may sit at another memory alignment, and
    # the CPU's matrix kernels then round a few last bits differently (measured: 2e-7 in the pooled
    # embedding), so the pictures may differ by a level here and there.
    assert np.abs(np.asarray(a.image, np.int16) - np.asarray(b.image, np.int16)).max() <= 2


def test_single_file_keys_decide_the_family():
    from charstudio.models.loading import check_single_file_layout

    xl_keys = ["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.conv_in.weight",
               "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
               "conditioner.embedders.1.model.text_projection"]
    sd1_keys = ["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.conv_in.weight",
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    assert check_single_file_layout("x", xl_keys).name == "sdxl"
    assert check_single_file_layout("x", sd1_keys).name == "sd1"
    with pytest.raises(ModelLoadError, match=r"lacks UNet .* keys \(it has encoder\.\*\)"):
        check_single_file_layout("x", ["encoder.layer.0.weight"])
    with pytest.raises(ModelLoadError, match=r"SDXL single-file layout: it lacks OpenCLIP bigG"):
        check_single_file_layout("x", xl_keys[:3])


def test_half_an_sdxl_is_refused():
    from charstudio.models.family import detect_family
    from charstudio.models.tiny import build_tiny_components, build_tiny_sdxl_components

    parts = {**build_tiny_components(), "text_encoder_2": build_tiny_sdxl_components()["text_encoder_2"]}
    with pytest.raises(ModelLoadError, match="neither SD 1.x nor SDXL"):
        detect_family(parts)


def test_sizes_are_bounded_by_the_families_native_size(family_studio):
    assert family_studio.default_size == 128  # tiny's and tiny-sdxl's latents are 16x16
    with pytest.raises(ConfigError, match="trained at 128x128"):
        family_studio.generate(PROMPT, width=512, height=512, num_inference_steps=1)


def test_a_controlnet_of_the_other_family_is_refused_before_it_loads(tmp_path, family):
    from charstudio import Studio
    from helpers import TinyFamily

    other = TinyFamily("sd1" if family.is_sdxl else "sdxl")
    other.components()["controlnet"].save_pretrained(tmp_path / "cn_other")
    family.components()["controlnet"].save_pretrained(tmp_path / "cn_own")
    family.plain_pipeline().save_pretrained(tmp_path / "model")
    wrong = Studio.from_pretrained(str(tmp_path / "model"), device="cpu", controlnet=str(tmp_path / "cn_other"))
    label, theirs = family.family.label, other.family.label
    hint = family.family.openpose_controlnet.split("/")[0]  # xinsir for SDXL, lllyasviel for SD 1.x
    with pytest.raises(ModelLoadError, match=fr"is an {theirs} ControlNet and the model is {label}.*{hint}"):
        wrong.generate(PROMPT, pose="waving", num_inference_steps=1, width=64, height=64)
    assert wrong.components["controlnet"] is None
    ok = Studio.from_pretrained(str(tmp_path / "model"), device="cpu", controlnet=str(tmp_path / "cn_own"))
    assert ok.generate(PROMPT, pose="waving", num_inference_steps=1, width=64, height=64).image.size == (64, 64)


def test_a_small_picture_on_sdxl_warns_with_the_trained_sizes(tiny_sdxl_studio):
    xl = tiny_sdxl_studio
    with pytest.warns(UserWarning, match=r"SDXL model trained at 128x128, 104x152, 152x104.*64x64 gives poor"):
        xl.generate(PROMPT, num_inference_steps=1, width=64, height=64)


def test_the_anime_sdxl_presets(monkeypatch):
    """illustrious / noobai-vpred / animagine are SDXL hub presets paired with xinsir's ControlNet;
    offline they fail in one line naming the hub id; noobai-vpred loads as v-prediction."""
    from charstudio import Studio
    from charstudio.models import loading
    from charstudio.models.presets import PRESETS
    from charstudio.models.tiny import build_tiny_sdxl_components

    for name in ("illustrious", "noobai-vpred", "animagine", "sdxl"):
        p = PRESETS[name]
        assert p.family == "sdxl" and p.controlnet == "xinsir/controlnet-openpose-sdxl-1.0" and p.repo.count("/") == 1
        with pytest.raises(ModelLoadError, match=f"{p.repo}.*HF_HUB_OFFLINE=1") as err:
            Studio.from_pretrained(name, device="cpu")
        assert "\n" not in str(err.value)
    # The preset's prediction type is applied to what loads (here tiny-sdxl's parts stand in for the download).
    seen = []
    real_build = build_tiny_sdxl_components
    monkeypatch.setattr("charstudio.models.tiny.build_tiny_sdxl_components", lambda: seen.append(1) or real_build())
    monkeypatch.setattr(loading, "resolve_model", lambda model, **kw: loading.ModelSource(
        "builtin", "tiny-sdxl", model, PRESETS[model].controlnet))
    monkeypatch.setattr("charstudio.studio.session.resolve_model", loading.resolve_model)
    vp = Studio.from_pretrained("noobai-vpred", device="cpu")
    assert seen and vp.model_id == "noobai-vpred" and vp.prediction_type == "v_prediction"
    assert vp.make_config("a girl", width=64, height=64).guidance_rescale == 0.7
    assert Studio.from_pretrained("animagine", device="cpu").prediction_type == "epsilon"


def test_low_vram_offloads_each_part_and_draws_the_same_pictures(family, family_studio, monkeypatch):
    """low_vram=True: the parts stay in CPU memory behind diffusers' model-offload hooks (moved to
    the device only while they run), the VAE decodes in tiles, and pictures are unchanged."""
    from charstudio.models import device

    low = family.studio(low_vram=True)
    tiled = family.studio()
    tiled.components["vae"].enable_tiling()  # the same decode, without offloading
    hooks = count_offload_hooks(monkeypatch, low.components)
    tiles = count_tiled_decodes(monkeypatch, low.components["vae"])
    # 192x160 is 24x20 latents, past the VAE's 16-latent tile: the decode runs in tiles
    kw = dict(seed=3, num_inference_steps=2, width=192, height=160)
    for i, pose in enumerate((None, "waving", None)):  # switching pipelines re-installs the hooks
        before = hooks.copy()
        picture = np.asarray(low.generate(PROMPT, pose=pose, **kw).image, np.int16)
        ran = hooks - before
        # every part ran behind its hook, moved to the studio's device: the UNet (and the
        # ControlNet) once a step, the VAE once, each text encoder at least once
        assert ran["unet"] == 2 and ran["controlnet"] == (2 if pose else 0) and ran["vae"] == 1, ran
        assert all(ran[name] >= 1 for name in family.text_encoders), ran
        assert {torch.device(d).type for d in hooks.devices} == {low.device.type}
        assert len(tiles) == i + 1 and tiles[-1][-2:] == (20, 24)
        assert np.array_equal(picture, np.asarray(tiled.generate(PROMPT, pose=pose, **kw).image, np.int16))
        # and tiling is a real change: the untiled decode differs, by a level or two on average
        plain = np.asarray(family_studio.generate(PROMPT, pose=pose, **kw).image, np.int16)
        assert 0.3 < np.abs(picture - plain).mean() < 8
    assert low.low_vram and low.components["vae"].use_tiling
    assert all(hasattr(low.components[n], "_hf_hook") for n in ("unet", *family.text_encoders, "vae"))
    assert not family_studio.low_vram and not hasattr(family_studio.components["unet"], "_hf_hook")
    # Auto: chosen on a CUDA card with less memory than the model needs, never on the CPU.
    parts = family_studio.components
    need = device.estimated_gpu_bytes(parts, 1024)
    assert device.choose_low_vram(None, torch.device("cpu"), parts, 1024) is False

    class Card:
        total_memory = int(need / device.LOW_VRAM_SHARE) - 1

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: Card)
    assert device.choose_low_vram(None, torch.device("cuda"), parts, 1024) is True
    Card.total_memory = 2 * need
    assert device.choose_low_vram(None, torch.device("cuda"), parts, 1024) is False


def test_the_real_sdxl_sizes_need_low_vram_on_a_12_gb_card():
    """The estimate on SDXL's real shapes in fp16 (built on the meta device, no memory): with its
    ControlNet it does not fit a 12 GB card, and fits a 24 GB one."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from charstudio.models.device import LOW_VRAM_SHARE, estimated_gpu_bytes
    from charstudio.models.family import SDXL

    folder = SDXL.config_folder()
    with torch.device("meta"):
        parts = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
                 "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
                 "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
                 "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))}
        for m in parts.values():
            m.to(torch.float16)
    need = estimated_gpu_bytes(parts, 1024)
    assert 12e9 * LOW_VRAM_SHARE < need < 24e9 * LOW_VRAM_SHARE


def test_sdxl_presets_use_the_fp16_safe_vae_in_fp16_only(monkeypatch, tmp_path, caplog):
    """In fp16 an SDXL preset's VAE is replaced by the fp16-fix one; in fp32 it is not; offline
    without it the model's own VAE stays (decoded in fp32 on overflow) with a warning."""
    import dataclasses
    import logging

    from charstudio.models import loading
    from charstudio.models.presets import PRESETS, SDXL_FP16_VAE
    from charstudio.models.tiny import build_tiny_sdxl_components

    assert all(PRESETS[n].fp16_vae == SDXL_FP16_VAE for n in ("sdxl", "illustrious", "noobai-vpred", "animagine"))
    assert PRESETS["sd15"].fp16_vae is None
    fixed = build_tiny_sdxl_components(seed=5)["vae"]
    fixed.save_pretrained(tmp_path / "vae-fix")
    monkeypatch.setitem(PRESETS, "tiny-sdxl", dataclasses.replace(PRESETS["tiny-sdxl"], fp16_vae=str(tmp_path / "vae-fix")))
    source = loading.resolve_model("tiny-sdxl")
    half = loading.load_components(source, dtype=torch.float16)
    assert torch.equal(half["vae"].decoder.conv_out.weight, fixed.decoder.conv_out.weight.half())
    full = loading.load_components(source, dtype=torch.float32)
    assert not torch.equal(full["vae"].decoder.conv_out.weight, fixed.decoder.conv_out.weight)
    monkeypatch.setitem(PRESETS, "tiny-sdxl", dataclasses.replace(PRESETS["tiny-sdxl"], fp16_vae=SDXL_FP16_VAE))
    with caplog.at_level(logging.WARNING, logger="charstudio.models.loading"):
        own = loading.load_components(source, dtype=torch.float16)
    assert torch.equal(own["vae"].decoder.conv_out.weight, full["vae"].decoder.conv_out.weight.half())
    assert SDXL_FP16_VAE in caplog.text and "fp32" in caplog.text
