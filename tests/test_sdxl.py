"""The SDXL family on `tiny-sdxl`: detected from the model, encoded with both text encoders,
drawn through diffusers' own SDXL pipelines, pixel-equal to a plain pipeline call."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from a1111_oracle import assert_png_matches_recipe
from offload_spy import count_offload_hooks, count_tiled_decodes
from charstudio.errors import ConfigError, ModelLoadError

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a girl with long red hair, blue dress"


@pytest.fixture(scope="module")
def xl():
    from charstudio import Studio

    return Studio.from_pretrained("tiny-sdxl", device="cpu")


def _plain_pipeline(kind: str = "txt2img"):
    from charstudio.models.family import SDXL
    from charstudio.models.tiny import build_tiny_sdxl_components

    c = build_tiny_sdxl_components()
    parts = {k: c[k] for k in SDXL.component_names}
    if "controlnet" in kind:
        parts["controlnet"] = c["controlnet"]
    pipe = SDXL.build_pipeline(kind, parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_tiny_sdxl_has_sdxls_parts(xl):
    c = xl.components
    assert xl.family.name == "sdxl" and xl.family.label == "SDXL"
    assert type(c["text_encoder"]).__name__ == "CLIPTextModel"
    assert type(c["text_encoder_2"]).__name__ == "CLIPTextModelWithProjection"
    assert c["tokenizer_2"].pad_token == "!" and c["tokenizer"].pad_token == "<|endoftext|>"
    unet = c["unet"].config
    assert unet.addition_embed_type == "text_time"
    # diffusers' own check: six time ids plus the pooled embedding feed the added embedding
    pooled = c["text_encoder_2"].config.projection_dim
    assert unet.addition_time_embed_dim * 6 + pooled == c["unet"].add_embedding.linear_1.in_features
    assert unet.cross_attention_dim == c["text_encoder"].config.hidden_size + c["text_encoder_2"].config.hidden_size
    assert type(xl.pipeline("txt2img")).__name__ == "StableDiffusionXLPipeline"
    assert xl.controlnet_source == "xinsir/controlnet-openpose-sdxl-1.0"


def test_generate_is_pixel_equal_to_a_plain_sdxl_pipeline(xl):
    from charstudio.schedulers import make_scheduler

    result = xl.generate(PROMPT, seed=11, num_inference_steps=3, width=64, height=64)
    pipe = _plain_pipeline()
    pipe.scheduler = make_scheduler(result.recipe.scheduler, dict(pipe.scheduler.config))
    plain = pipe(PROMPT, num_inference_steps=3, width=64, height=64, guidance_scale=result.recipe.guidance_scale,
                 generator=torch.Generator().manual_seed(11)).images[0]
    np.testing.assert_array_equal(np.asarray(result.image), np.asarray(plain))


def test_same_seed_same_picture_and_a_png_reruns_exactly(xl, tmp_path):
    from charstudio import Result

    a = xl.generate(PROMPT, seed=5, num_inference_steps=2, width=64, height=64)
    b = xl.generate(PROMPT, seed=5, num_inference_steps=2, width=64, height=64)
    c = xl.generate(PROMPT, seed=6, num_inference_steps=2, width=64, height=64)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))
    path = a.save(tmp_path)[0]
    again = xl.run(Result.from_png(path).recipe)
    assert np.array_equal(np.asarray(again.image), np.asarray(a.image))


def test_both_encoders_condition_and_an_empty_negative_is_zeros(xl):
    enc = xl.encoder
    e = enc.encode(PROMPT, "")
    assert tuple(e.prompt_embeds.shape) == (1, 77, 80) and tuple(e.pooled_prompt_embeds.shape) == (1, 48)
    assert not e.negative_prompt_embeds.any() and not e.negative_pooled_prompt_embeds.any()  # force_zeros
    n = enc.encode(PROMPT, "blurry")
    assert n.negative_prompt_embeds.abs().sum() > 0 and n.negative_pooled_prompt_embeds.abs().sum() > 0
    # each half of the 64-wide context is one encoder's penultimate layer, as diffusers builds it
    ids = xl.components["tokenizer"](PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        first = xl.components["text_encoder"](ids, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(e.prompt_embeds[..., :32], first)


def test_clip_skip_counts_back_from_sdxls_penultimate_layer(xl):
    """SDXL already conditions on the penultimate layer (Pony's "clip skip 2" is clip_skip=None);
    clip_skip=1 goes one layer further back in both encoders."""
    ids = xl.components["tokenizer_2"](PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        states = xl.components["text_encoder_2"](ids, output_hidden_states=True).hidden_states
    default = xl.encoder.encode(PROMPT, "", clip_skip=None).prompt_embeds[..., 32:]
    skip1 = xl.encoder.encode(PROMPT, "", clip_skip=1).prompt_embeds[..., 32:]
    torch.testing.assert_close(default, states[-2])
    torch.testing.assert_close(skip1, states[-3])


def test_long_prompts_are_chunked_in_both_encoders_and_weights_apply(xl):
    long = ", ".join(["red hair"] * 20)  # about 180 byte-tokens on tiny's tokenizer
    e = xl.encoder.encode(long, "")
    assert e.num_chunks >= 2 and e.prompt_embeds.shape[1] == 77 * e.num_chunks
    assert e.negative_prompt_embeds.shape == e.prompt_embeds.shape
    weighted = xl.encoder.encode("(red hair:1.5), blue dress", "")
    plain = xl.encoder.encode("red hair, blue dress", "")
    assert not torch.equal(weighted.prompt_embeds, plain.prompt_embeds)
    result = xl.generate(long, seed=1, num_inference_steps=2, width=64, height=64)
    assert result.image.size == (64, 64)


def test_a_pose_uses_the_sdxl_controlnet_pipeline(xl):
    plain = xl.generate(PROMPT, seed=2, num_inference_steps=2, width=64, height=64)
    posed = xl.generate(PROMPT, seed=2, num_inference_steps=2, width=64, height=64, pose="waving")
    assert type(xl.pipeline("controlnet")).__name__ == "StableDiffusionXLControlNetPipeline"
    assert posed.recipe.pose is not None
    assert not np.array_equal(np.asarray(plain.image), np.asarray(posed.image))


def test_img2img_and_from_photo_on_sdxl(xl):
    from PIL import Image

    photo = Image.new("RGB", (64, 64), (200, 40, 40))
    steps = []
    result = xl.from_photo(PROMPT, photo, strength=0.5, pose=None, seed=3, num_inference_steps=4,
                           progress=steps.append)
    assert result.extras["kind"] == "img2img" and result.image.size == (64, 64)
    assert type(xl.pipeline("img2img")).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert steps[-1].steps == 2 and steps[-1].step == 2  # diffusers runs int(4 * 0.5) steps


def test_a_diffusers_folder_is_detected_as_sdxl(tmp_path, xl):
    from charstudio import Studio

    pipe = _plain_pipeline()
    pipe.save_pretrained(tmp_path / "xl")
    assert "XL" in json.loads((tmp_path / "xl" / "model_index.json").read_text())["_class_name"]
    studio = Studio.from_pretrained(str(tmp_path / "xl"), device="cpu")
    assert studio.family.name == "sdxl" and studio.controlnet_source == "xinsir/controlnet-openpose-sdxl-1.0"
    a = studio.generate(PROMPT, seed=4, num_inference_steps=2, width=64, height=64)
    b = xl.generate(PROMPT, seed=4, num_inference_steps=2, width=64, height=64)
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


def test_sizes_are_bounded_by_the_families_native_size(xl):
    assert xl.default_size == 128  # tiny-sdxl's latents are 16x16, as tiny's
    with pytest.raises(ConfigError, match="trained at 128x128"):
        xl.generate(PROMPT, width=512, height=512, num_inference_steps=1)


def test_interpolation_blends_pooled_embeddings_and_its_ends_are_the_ends_own_pictures(xl):
    a = xl.make_config("a girl with red hair", seed=3, num_inference_steps=2, width=64, height=64)
    b = xl.make_config("a boy with blue hair", seed=4, num_inference_steps=2, width=64, height=64)
    seen = []  # the pooled embedding (the UNet's text_embeds) of the prompt row of every UNet call

    def spy(module, args, kwargs):
        seen.append(kwargs["added_cond_kwargs"]["text_embeds"][-1].detach().clone())

    hook = xl.components["unet"].register_forward_pre_hook(spy, with_kwargs=True)
    try:
        frames = xl.interpolate(a, b, frames=3)
    finally:
        hook.remove()
    assert np.array_equal(np.asarray(frames.frames[0]), np.asarray(xl.run(a).image))
    assert np.array_equal(np.asarray(frames.frames[-1]), np.asarray(xl.run(b).image))
    middle = np.asarray(frames.frames[1], dtype=float)
    assert not np.array_equal(middle, np.asarray(frames.frames[0])) and not np.array_equal(middle, frames.frames[2])
    # the pooled embedding is blended too: halfway the UNet gets the spherical midpoint of the ends'
    # pooled vectors (their directions' bisector at their mean length), far from either end's
    from charstudio.interpolation import encode_to_one_length

    ends = encode_to_one_length(xl.encoder, [(a.prompt, ""), (b.prompt, "")], None)
    pa, pb = (e.pooled_prompt_embeds[0].double() for e in ends)
    mid = (pa / pa.norm() + pb / pb.norm())
    mid = (mid / mid.norm() * (pa.norm() + pb.norm()) / 2).float()
    assert (pa - pb).norm() > 0.5 * pa.norm()  # the two prompts' pooled vectors are far apart
    for target in (pa.float(), pb.float(), mid):
        closest = min(float((x - target).norm()) for x in seen)
        assert closest < 1e-4 * float(target.norm()), (closest, float(target.norm()))
    assert len(seen) == 3 * 2  # three frames of two steps, the middle one conditioned on the midpoint
    enc_a, enc_b = encode_to_one_length(xl.encoder, [(a.prompt, ""), ("a boy with blue hair, " * 8, "")], None)
    assert enc_a.pooled_prompt_embeds is not None and enc_a.prompt_embeds.shape == enc_b.prompt_embeds.shape
    assert enc_a.num_chunks == 2  # padded to the longer prompt's chunks, so the two blend
    assert not enc_a.negative_prompt_embeds.any()  # an empty negative stays zeros, as in a plain run


def test_a_style_mix_on_sdxl_reruns_bit_identically(xl):
    from charstudio import Result

    mixed = xl.mix_styles("a girl", {"watercolor": 0.5, "cel-anime": 0.5}, seed=2, num_inference_steps=2,
                          width=64, height=64)
    recipe = mixed.recipe
    assert len(recipe.style_mix) == 2
    again = xl.run(Result([mixed.images[0]], [recipe]).recipe)
    assert np.array_equal(np.asarray(again.image), np.asarray(mixed.images[0]))
    single = xl.generate("a girl", style="watercolor", seed=2, num_inference_steps=2, width=64, height=64)
    assert not np.array_equal(np.asarray(single.image), np.asarray(mixed.images[0]))


def test_a_controlnet_of_the_other_family_is_refused_before_it_loads(tmp_path):
    from charstudio import Studio
    from charstudio.models.tiny import build_tiny_components, build_tiny_sdxl_components

    build_tiny_components()["controlnet"].save_pretrained(tmp_path / "cn_sd1")
    build_tiny_sdxl_components()["controlnet"].save_pretrained(tmp_path / "cn_xl")
    _plain_pipeline().save_pretrained(tmp_path / "xl")
    xl = Studio.from_pretrained(str(tmp_path / "xl"), device="cpu", controlnet=str(tmp_path / "cn_sd1"))
    with pytest.raises(ModelLoadError, match=r"is an SD 1.x ControlNet and the model is SDXL.*xinsir"):
        xl.generate(PROMPT, pose="waving", num_inference_steps=1, width=64, height=64)
    assert xl.components["controlnet"] is None
    ok = Studio.from_pretrained(str(tmp_path / "xl"), device="cpu", controlnet=str(tmp_path / "cn_xl"))
    assert ok.generate(PROMPT, pose="waving", num_inference_steps=1, width=64, height=64).image.size == (64, 64)


def test_a_small_picture_on_sdxl_warns_with_the_trained_sizes(xl):
    with pytest.warns(UserWarning, match=r"SDXL model trained at 128x128, 104x152, 152x104.*64x64 gives poor"):
        xl.generate(PROMPT, num_inference_steps=1, width=64, height=64)


def test_v_prediction_models_get_their_schedule_and_cfg_rescale(xl):
    from charstudio import Studio
    from charstudio.models.family import is_v_prediction_file, prediction_scheduler_config

    vp = Studio.from_pretrained("tiny-sdxl", device="cpu", prediction_type="v_prediction")
    cfg = vp.base_scheduler_config
    assert (vp.prediction_type, cfg["rescale_betas_zero_snr"], cfg["timestep_spacing"]) == ("v_prediction", True,
                                                                                          "trailing")
    assert xl.prediction_type == "epsilon"
    a = vp.generate(PROMPT, seed=1, num_inference_steps=2, width=64, height=64)
    assert a.recipe.guidance_rescale == 0.7  # the default for v-prediction, recorded in the recipe
    b = vp.generate(PROMPT, seed=1, num_inference_steps=2, width=64, height=64, guidance_rescale=0.0)
    e = xl.generate(PROMPT, seed=1, num_inference_steps=2, width=64, height=64)
    assert not np.array_equal(np.asarray(a.image), np.asarray(b.image))  # CFG rescale acts
    assert not np.array_equal(np.asarray(b.image), np.asarray(e.image))  # so does the v-prediction schedule
    assert np.array_equal(np.asarray(vp.run(a.recipe).image), np.asarray(a.image))
    # with a pose (diffusers' ControlNet pipelines have no CFG rescale) the default is off, and asking is refused
    assert vp.make_config(PROMPT, pose="waving", width=64, height=64).guidance_rescale == 0.0
    with pytest.raises(ConfigError, match="guidance_rescale=0.5 .*has no CFG rescale"):
        vp.generate(PROMPT, pose="waving", guidance_rescale=0.5, num_inference_steps=1, width=64, height=64)
    assert is_v_prediction_file(["model.diffusion_model.x", "v_pred", "ztsnr"]) and not is_v_prediction_file(["x"])
    assert prediction_scheduler_config({"prediction_type": "epsilon"}, "epsilon") == {"prediction_type": "epsilon"}


def test_the_apps_offer_sdxl_models_and_sizes_and_draw_on_tiny_sdxl(xl, tmp_path):
    pytest.importorskip("ipywidgets")
    from charstudio.ui.explore import ExploreApp

    app = ExploreApp(xl, steps=1, output_dir=str(tmp_path / "out"))
    assert {"sdxl", "tiny-sdxl", "sd15", "mini"} <= set(app.model.options)
    sizes = {v for _, v in app.width.options}
    assert {832, 1216, 896, 1152, 1344, 768} <= sizes  # SDXL's training buckets
    app.prompt.value = PROMPT
    app.width.value, app.height.value = 832, 1216
    cfg = app.make_config()
    assert (cfg.width, cfg.height) == (832, 1216)
    app.width.value = app.height.value = 64
    app.generate_button.click()
    assert app.wait(120) and app.status.level == "ok", app.status.text
    assert app.gallery.items[-1].recipe.model == "tiny-sdxl"


def test_micro_conditioning_is_set_recorded_and_read_back_by_an_a1111_parser(xl, tmp_path):
    from PIL import Image

    from charstudio import Result
    from charstudio.metadata import PARAMETERS_KEY, parse_parameters

    plain = xl.generate(PROMPT, seed=8, num_inference_steps=2, width=64, height=48)
    rec = plain.recipe
    assert (rec.original_size, rec.crops_coords_top_left, rec.target_size) == ((48, 64), (0, 0), (48, 64))
    told = xl.generate(PROMPT, seed=8, num_inference_steps=2, width=64, height=48, original_size=(1024, 512),
                       crops_coords_top_left=(16, 0))
    assert not np.array_equal(np.asarray(told.image), np.asarray(plain.image))  # the UNet sees it
    path = told.save(tmp_path)[0]
    text = Image.open(path).text[PARAMETERS_KEY]
    assert "Original size: 512x1024" in text and "Crop: 0x16" in text and "Target size: 64x48" in text
    # An independent A1111 reader (sd-parsers) reads the recipe's fields, the micro-conditioning
    # among them in A1111's WIDTHxHEIGHT / x-by-y order (the recipe keeps diffusers' (h, w), (top, left)).
    read = assert_png_matches_recipe(path, told.recipe, "sdxl")
    assert (read["Original size"], read["Crop"], read["Target size"]) == ("512x1024", "0x16", "64x48")
    parsed = parse_parameters(text)  # and our own reader, from the text alone, agrees
    assert (parsed["original_size"], parsed["crops_coords_top_left"]) == ((1024, 512), (16, 0))
    again = xl.run(Result.from_png(path).recipe)
    assert np.array_equal(np.asarray(again.image), np.asarray(told.image))
    sd1 = __import__("charstudio").Studio.from_pretrained("tiny", device="cpu")
    assert sd1.make_config("a cat").original_size is None  # SD 1.x has no micro-conditioning


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


def test_an_sd1_lora_on_sdxl_is_refused_naming_the_family(tmp_path):
    from PIL import Image

    from charstudio import Studio
    from charstudio.errors import ConfigError
    from charstudio.training import LoraTrainingConfig, train_lora

    (tmp_path / "data").mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (60 * i, 90, 30)).save(tmp_path / "data" / f"img{i}.png")
    list(train_lora(LoraTrainingConfig(data_dir=str(tmp_path / "data"), name="sd1", model="tiny",
                                       output_dir=str(tmp_path / "lora"), max_train_steps=1, resolution=64,
                                       num_validation_images=0, rank=4)))
    xl = Studio.from_pretrained("tiny-sdxl", device="cpu")
    with pytest.raises(ConfigError, match=r"but the model is SDXL .*Nothing was loaded") as err:
        xl.load_lora(tmp_path / "lora" / "sd1")
    assert "\n" not in str(err.value) and not xl.loaded_loras


def test_low_vram_offloads_each_part_and_draws_the_same_pictures(xl, monkeypatch):
    """low_vram=True: the parts stay in CPU memory behind diffusers' model-offload hooks (moved to
    the device only while they run), the VAE decodes in tiles, and pictures are unchanged."""
    from charstudio import Studio
    from charstudio.models import device

    low = Studio.from_pretrained("tiny-sdxl", device="cpu", low_vram=True)
    tiled = Studio.from_pretrained("tiny-sdxl", device="cpu")
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
        assert ran["text_encoder"] >= 1 and ran["text_encoder_2"] >= 1, ran
        assert {torch.device(d).type for d in hooks.devices} == {low.device.type}
        assert len(tiles) == i + 1 and tiles[-1][-2:] == (20, 24)
        assert np.array_equal(picture, np.asarray(tiled.generate(PROMPT, pose=pose, **kw).image, np.int16))
        # and tiling is a real change: the untiled decode differs, by a level or two on average
        plain = np.asarray(xl.generate(PROMPT, pose=pose, **kw).image, np.int16)
        assert 0.3 < np.abs(picture - plain).mean() < 8
    assert low.low_vram and low.components["vae"].use_tiling
    assert all(hasattr(low.components[n], "_hf_hook") for n in ("unet", "text_encoder", "text_encoder_2", "vae"))
    assert not xl.low_vram and not hasattr(xl.components["unet"], "_hf_hook")
    # Auto: chosen on a CUDA card with less memory than the model needs, never on the CPU.
    parts = xl.components
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


def test_a1111_clip_skip_means_the_same_layer_on_each_family(xl, tmp_path):
    """A1111 counts layers from the last as 1. SDXL's default is the penultimate layer, A1111's
    "Clip skip: 2" (Pony's advice), so on SDXL clip_skip=1 is written "Clip skip: 3" and a civitai
    recipe saying "Clip skip: 2" reads as the default; on SD 1.x "Clip skip: 2" is clip_skip=1."""
    from charstudio import Result, Studio
    from charstudio.metadata import format_parameters, parse_parameters
    from charstudio.models.family import SD1, SDXL

    sd1 = Studio.from_pretrained("tiny", device="cpu")
    assert "Clip skip: 3" in format_parameters(xl.make_config(PROMPT, clip_skip=1, width=64, height=64))
    assert "Clip skip: 2" in format_parameters(sd1.make_config(PROMPT, clip_skip=1, width=64, height=64))
    assert "Clip skip" not in format_parameters(xl.make_config(PROMPT, width=64, height=64))
    pony = "score_9, 1girl\nSteps: 25, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 832x1216, Clip skip: 2"
    assert "clip_skip" not in parse_parameters(pony, SDXL)
    assert parse_parameters(pony, SD1)["clip_skip"] == 1
    assert parse_parameters(pony.replace("Clip skip: 2", "Clip skip: 3"), SDXL)["clip_skip"] == 1
    # Our own SDXL text says it is SDXL (its Target size), so it reads back right without a family.
    made = xl.generate(PROMPT, clip_skip=1, seed=4, num_inference_steps=2, width=64, height=64)
    path = made.save(tmp_path)[0]
    from PIL import Image

    text = Image.open(path).text["parameters"]
    assert assert_png_matches_recipe(path, made.recipe, "sdxl")["Clip skip"] == "3"  # an independent reader
    assert parse_parameters(text)["clip_skip"] == 1
    assert Result.from_png(path, family=SDXL).recipe.clip_skip == 1


def test_trace_on_sdxl_maps_attention_over_both_encoders_and_previews_sdxl_latents(xl, tmp_path):
    """A traced SDXL run: cross-attention maps per prompt token over the 2048-wide (here 64-wide)
    context, the image unchanged by tracing, and previews through SDXL's own latent-to-RGB map
    (TAESDXL when cached; offline "auto" falls back to that map)."""
    from charstudio.models.family import SD1, SDXL
    from charstudio.trace import LivePreview, decode_latents, plot_filmstrip, trace_run

    kw = dict(seed=5, num_inference_steps=3, width=64, height=64)
    shown = []
    trace, result = trace_run(xl, PROMPT, callbacks=[LivePreview(lambda i, im: shown.append(im), every=1)], **kw)
    assert trace.family == "sdxl" and len(trace.records) == 3 and trace.attention is not None
    assert trace.attention.shape[0] >= len(trace.tokens) and trace.attention.shape[1:] == (8, 8)
    assert float(trace.attention.sum(0).mean()) == pytest.approx(1.0, abs=1e-3)
    assert np.array_equal(np.asarray(result.image), np.asarray(xl.generate(PROMPT, **kw).image))
    assert len(shown) == 3 and shown[0].size == (8, 8)
    z = trace.records[-1].pred_x0[:1]
    expected = torch.einsum("bchw,cr->brhw", z.float(), torch.tensor(SDXL.latent_rgb)) + \
        torch.tensor(SDXL.latent_rgb_bias)[None, :, None, None]
    expected = ((expected.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(decode_latents(z, "approx", SDXL)[0]), expected)
    assert np.array_equal(np.asarray(decode_latents(z, "auto", SDXL)[0]), expected)  # no TAESDXL offline
    assert not np.array_equal(np.asarray(decode_latents(z, "approx", SD1)[0]), expected)
    assert np.array_equal(np.asarray(shown[-1]), np.asarray(decode_latents(trace.records[-1].latents[:1], "auto", SDXL)[0]))
    assert plot_filmstrip(trace, tmp_path / "strip.png").is_file()


def test_a_union_controlnet_draws_poses_in_its_openpose_mode(tmp_path):
    """A ControlNetUnionModel (xinsir's union promax layout) given as controlnet= runs through
    diffusers' SDXL union pipelines in OpenPose mode (0), for txt2img and img2img: the pose steers
    the picture, and another mode would draw something else."""
    from diffusers import ControlNetUnionModel

    from charstudio import Studio
    from charstudio.models.tiny import build_tiny_sdxl_components

    unet = build_tiny_sdxl_components()["unet"]
    torch.manual_seed(0)
    keep = ("down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim",
            "norm_num_groups", "transformer_layers_per_block", "addition_embed_type", "addition_time_embed_dim",
            "projection_class_embeddings_input_dim", "use_linear_projection")
    width = unet.config.block_out_channels[0]  # the union's task embedding is added to the first block's features
    union = ControlNetUnionModel(**{k: unet.config[k] for k in keep}, conditioning_embedding_out_channels=(8, 16, 32, 32),
                                 num_trans_channel=width, num_trans_head=4, num_proj_channel=width)
    with torch.no_grad():  # a fresh ControlNet's zero convolutions would have no effect
        for conv in [*union.controlnet_down_blocks, union.controlnet_mid_block, union.controlnet_cond_embedding.conv_out]:
            torch.nn.init.normal_(conv.weight, std=0.3)
        for p in union.spatial_ch_projs.parameters():
            torch.nn.init.normal_(p, std=0.3)
    union.save_pretrained(tmp_path / "union")
    studio = Studio.from_pretrained("tiny-sdxl", device="cpu", controlnet=str(tmp_path / "union"))
    kw = dict(seed=2, num_inference_steps=2, width=64, height=64)
    waving = studio.generate(PROMPT, pose="waving", **kw)
    assert type(studio.pipeline("controlnet")).__name__ == "StableDiffusionXLControlNetUnionPipeline"
    assert type(studio.controlnet).__name__ == "ControlNetUnionModel"
    plain = studio.generate(PROMPT, **kw)
    sitting = studio.generate(PROMPT, pose="sitting", **kw)
    assert not np.array_equal(np.asarray(waving.image), np.asarray(plain.image))
    assert not np.array_equal(np.asarray(waving.image), np.asarray(sitting.image))
    from charstudio.models.family import SDXL

    import dataclasses

    studio.family = dataclasses.replace(SDXL, union_openpose_mode=3)
    try:
        assert not np.array_equal(np.asarray(studio.generate(PROMPT, pose="waving", **kw).image),
                                  np.asarray(waving.image))
    finally:
        studio.family = SDXL
    photo = studio.from_photo(PROMPT, plain.image, pose="waving", strength=0.6, seed=2, num_inference_steps=2)
    assert type(studio.pipeline("controlnet_img2img")).__name__ == "StableDiffusionXLControlNetUnionImg2ImgPipeline"
    assert photo.image.size == (64, 64)


def test_cli_thick_pose_lines_and_low_vram(tmp_path, capsys):
    from PIL import Image

    from charstudio import Result
    from charstudio.cli import main

    for lines in ("standard", "thick"):
        assert main(["pose", "render", "walking", "--width", "1024", "--height", "1024", "--lines", lines,
                     "--out", str(tmp_path / f"{lines}.png")]) == 0
    drawn = {k: (np.asarray(Image.open(tmp_path / f"{k}.png")) > 0).any(-1).sum() for k in ("standard", "thick")}
    assert drawn["thick"] > 2 * drawn["standard"]
    assert main(["generate", "a girl", "--model", "tiny-sdxl", "--pose", "waving", "--pose-lines", "thick",
                 "--low-vram", "--steps", "2", "--width", "64", "--height", "64", "--seed", "1",
                 "--out", str(tmp_path / "out")]) == 0
    path = [line for line in capsys.readouterr().out.split() if "/out/" in line][0]
    assert Result.from_png(path).recipe.pose_lines == "thick"
