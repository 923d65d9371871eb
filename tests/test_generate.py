"""Generation core: determinism, recipes, parity with plain diffusers, long prompts, hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charstudio import CancelToken, GenerationCancelled, Result
from charstudio.errors import ConfigError
from charstudio.schedulers import SCHEDULERS, make_scheduler
from a1111_oracle import assert_png_matches_recipe
from helpers import pixels

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only slow them down

FAST = dict(num_inference_steps=4)
PROMPT = "a girl with long red hair, blue dress"


def test_same_seed_same_image_different_seed_differs_and_a_png_reruns_exactly(family_studio, tmp_path):
    a = family_studio.generate("a knight in red armour", seed=11, **FAST)
    b = family_studio.generate("a knight in red armour", seed=11, **FAST)
    c = family_studio.generate("a knight in red armour", seed=12, **FAST)
    assert np.array_equal(pixels(a.image), pixels(b.image))
    assert not np.array_equal(pixels(a.image), pixels(c.image))
    path = a.save(tmp_path)[0]
    again = family_studio.run(Result.from_png(path).recipe)
    assert np.array_equal(pixels(again.image), pixels(a.image))


def test_matches_plain_diffusers_on_the_same_model(family, family_studio):
    """Our path (own prompt encoding, own decode) gives the very pixels the family's own diffusers
    pipeline gives, built on fresh parts without charstudio."""
    # (the watermark off: plain diffusers puts none on)
    ours = family_studio.generate("a girl with red hair", negative_prompt="blurry", seed=5, guidance_scale=6.0,
                                  scheduler="euler", width=64, height=64, watermark=False, **FAST)
    pipe = family.plain_pipeline()
    pipe.scheduler = make_scheduler("euler", dict(pipe.scheduler.config))
    plain = pipe("a girl with red hair", negative_prompt="blurry", num_inference_steps=4, guidance_scale=6.0,
                 width=64, height=64, generator=torch.Generator().manual_seed(5)).images[0]
    assert np.array_equal(pixels(ours.image), pixels(plain))
    # and with no negative prompt (SDXL's empty negative is zeros, as diffusers' force_zeros_for_empty_prompt)
    ours = family_studio.generate(PROMPT, seed=11, scheduler="euler", width=64, height=64, watermark=False, **FAST)
    plain = pipe(PROMPT, num_inference_steps=4, width=64, height=64, guidance_scale=ours.recipe.guidance_scale,
                 generator=torch.Generator().manual_seed(11)).images[0]
    assert np.array_equal(pixels(ours.image), pixels(plain))


def test_batch_images_use_consecutive_seeds_and_each_recipe_rebuilds_its_image(tiny_studio, tmp_path):
    result = tiny_studio.generate("aiko", seed=100, num_images=3, **FAST)
    assert [r.seed for r in result.recipes] == [100, 101, 102]
    assert all(r.num_images == 1 and r.character == "aiko" and r.model == "tiny" for r in result.recipes)
    paths = result.save(tmp_path)
    assert len(paths) == 3 and all(p.exists() for p in paths)
    loaded = Result.from_png(paths[2])
    assert loaded.recipe == result.recipes[2]
    again = tiny_studio.run(loaded.recipe)
    # The three were drawn in one UNet batch; alone, batched kernels' rounding differs by <= 1 level.
    assert np.abs(pixels(again.image) - pixels(result.images[2])).max() <= 1
    assert np.array_equal(pixels(loaded.image), pixels(result.images[2]))  # PNG is lossless
    assert np.array_equal(pixels(tiny_studio.run(again.recipe).image), pixels(again.image))  # bit-identical on CPU


def test_saved_png_carries_a1111_parameters(tiny_studio, tmp_path):
    from PIL import Image

    result = tiny_studio.generate("a wizard", negative_prompt="blurry", seed=9, scheduler="euler-a",
                                  guidance_scale=5.5, **FAST)
    path = result.save(tmp_path)[0]
    text = Image.open(path).text["parameters"]
    lines = text.split("\n")
    assert lines[0] == "a wizard"
    assert lines[1] == "Negative prompt: blurry"
    assert lines[2] == "Steps: 4, Sampler: Euler a, CFG scale: 5.5, Seed: 9, Size: 128x128, Model: tiny"
    assert_png_matches_recipe(path, result.recipe, "sd1")


@pytest.mark.parametrize("settings", [
    dict(scheduler="dpm++2m-karras", clip_skip=1, guidance_scale=4.0, seed=12),
    dict(scheduler="ddim", negative_prompt="lowres, bad hands", seed=2**31 + 5, width=96, height=64),
    dict(scheduler="pndm", hires={"scale": 1.5, "strength": 0.45, "steps": 2, "upscaler": "pixel"}, seed=3),
    dict(scheduler="unipc", hires={"scale": 2, "strength": 0.6, "upscaler": "latent"}, width=64, height=64),
], ids=["karras-clip-skip", "ddim-wide", "hires-pixel", "hires-latent"])
def test_an_independent_a1111_reader_reads_the_recipe_from_the_png(tiny_studio, tmp_path, settings):
    """sd-parsers (not charstudio's own parser) reads size, seed, steps, sampler, CFG, clip skip
    and the hires fields of a saved PNG as the recipe has them, in A1111's meanings."""
    settings = {"num_inference_steps": 2, **settings}
    result = tiny_studio.generate("a wizard, blue hat", **settings)
    read = assert_png_matches_recipe(result.save(tmp_path)[0], result.recipe, "sd1")
    assert read["Size"] == f"{settings.get('width', 128)}x{settings.get('height', 128)}"  # the first pass's size


def test_save_never_overwrites(tiny_studio, tmp_path):
    result = tiny_studio.generate("a cat", seed=1, **FAST)
    first = result.save(tmp_path)[0]
    before = first.read_bytes()
    second = result.save(tmp_path)[0]
    assert first != second and first.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_card_seed_and_style_are_used(tiny_studio):
    from charstudio import load_character

    card = load_character("aiko")
    result = tiny_studio.generate("aiko", **FAST)
    assert result.recipe.seed == card.seed
    assert result.recipe.style == card.style
    assert "anime style" in result.recipe.prompt and card.traits["hair"] in result.recipe.prompt


def test_long_prompt_is_chunked_not_truncated_in_every_encoder_and_weights_apply(family_studio):
    enc = family_studio.encoder
    short = "a girl with red hair"
    long = short + ", " + ", ".join(f"detail number {i}" for i in range(20))
    assert enc.count_tokens(long) > 150  # the tiny tokenizer is per character
    e = enc.encode(long, "blurry")
    assert e.num_chunks == -(-enc.count_tokens(long) // 75) and e.num_chunks >= 2
    assert e.prompt_embeds.shape[1] == 77 * e.num_chunks == e.negative_prompt_embeds.shape[1]
    assert e.negative_prompt_embeds.shape == e.prompt_embeds.shape
    # Words past token 75 change the conditioning (they would be silently dropped by truncation).
    e2 = enc.encode(long[:-1] + "X", "blurry")
    assert not torch.equal(e.prompt_embeds, e2.prompt_embeds)
    # A1111 weights reach the conditioning.
    weighted = enc.encode("(red hair:1.5), blue dress", "")
    plain = enc.encode("red hair, blue dress", "")
    assert not torch.equal(weighted.prompt_embeds, plain.prompt_embeds)
    # And the long prompt generates.
    out = family_studio.generate(long, seed=1, **FAST)
    assert out.image.size == (128, 128)


def test_short_prompt_embedding_matches_diffusers_encode_prompt(family, family_studio):
    pipe = family_studio.pipeline("txt2img")
    ref = pipe.encode_prompt("red scarf", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    ours = family_studio.encoder.encode("red scarf")
    assert torch.equal(ref[0], ours.prompt_embeds)
    if family.is_sdxl:  # SDXL's pooled embedding, from the second encoder
        assert torch.equal(ref[2], ours.pooled_prompt_embeds)


def test_tiny_sdxl_has_sdxls_parts(tiny_sdxl_studio):
    xl = tiny_sdxl_studio
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


def test_sdxls_two_encoders_condition_and_an_empty_negative_is_zeros(tiny_sdxl_studio):
    xl = tiny_sdxl_studio
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


# The diffusers class and options each name must run (written out here, not read from SCHEDULERS).
EXPECTED_SCHEDULERS = {
    "euler-a": ("EulerAncestralDiscreteScheduler", {}), "euler": ("EulerDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}), "unipc": ("UniPCMultistepScheduler", {}), "lcm": ("LCMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}), "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    # the few-step presets' samplers (charstudio.speed.presets): trailing spacing is A1111's "SGM Uniform"
    "euler-trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "ddim-trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}), "tcd": ("TCDScheduler", {}),
}


def _timesteps_run(studio, name, **settings):
    """The scheduler class that ran, and the timestep of every UNet step, as the step callback saw them."""
    seen = []
    result = studio.generate("a robot", seed=3, scheduler=name, num_inference_steps=3, width=64, height=64,
                             callbacks=[lambda pipe, step, t, kw: seen.append(int(t)) or {}], **settings)
    return result, studio.pipeline("txt2img").scheduler, seen


def _reference_timesteps(base_config, name, steps=3):
    import diffusers

    cls_name, options = EXPECTED_SCHEDULERS[name]
    reference = getattr(diffusers, cls_name).from_config(dict(base_config), **options)
    reference.set_timesteps(steps)
    return [int(t) for t in reference.timesteps]


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_runs_and_is_recorded(tiny_studio, name):
    """Each name runs its own diffusers class, Karras sigmas only where the name says so, on the
    model's noise schedule: the timesteps run are those of that class built by hand."""
    assert set(SCHEDULERS) == set(EXPECTED_SCHEDULERS)
    result, used, seen = _timesteps_run(tiny_studio, name)
    assert result.recipe.scheduler == name
    assert type(used).__name__ == EXPECTED_SCHEDULERS[name][0]
    assert bool(used.config.get("use_karras_sigmas")) == name.endswith("karras")
    assert seen == _reference_timesteps(tiny_studio.base_scheduler_config, name)
    if name == "dpm++2m-karras":  # Karras sigmas put the steps elsewhere than the plain schedule
        assert seen != _reference_timesteps(tiny_studio.base_scheduler_config, "dpm++2m")
    if name.endswith("-trailing"):  # trailing spacing starts at the last training timestep; tiny's leading does not
        assert seen[0] == 999 and seen != _reference_timesteps(tiny_studio.base_scheduler_config, name[:-9])


@pytest.mark.parametrize("name", ["euler-a", "dpm++2m-karras", "ddim", "heun"])
def test_a_v_prediction_model_keeps_trailing_zero_snr_timesteps_under_every_scheduler(name):
    """A v-prediction model's schedule (zero terminal SNR, trailing spacing) survives the change of
    scheduler: the first step is the last training timestep (999), which leading spacing never is."""
    from charstudio import Studio

    vp = Studio.from_pretrained("tiny", device="cpu", prediction_type="v_prediction")
    _, used, seen = _timesteps_run(vp, name, guidance_rescale=0.0)
    assert (used.config.prediction_type, used.config.timestep_spacing, used.config.rescale_betas_zero_snr) == \
        ("v_prediction", "trailing", True)
    assert seen[0] == 999 and seen == _reference_timesteps(vp.base_scheduler_config, name)


def test_v_prediction_models_get_their_schedule_and_cfg_rescale(tiny_sdxl_studio):
    from charstudio import Studio
    from charstudio.models.family import is_v_prediction_file, prediction_scheduler_config

    xl = tiny_sdxl_studio
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


def test_schedulers_differ(tiny_studio):
    a = tiny_studio.generate("a robot", seed=3, scheduler="euler", num_inference_steps=6)
    b = tiny_studio.generate("a robot", seed=3, scheduler="ddim", num_inference_steps=6)
    assert not np.array_equal(pixels(a.image), pixels(b.image))


def test_callback_that_edits_latents_changes_the_result(tiny_studio):
    seen = []

    def double_at_step_1(pipe, step, t, kw):
        seen.append(step)
        return {"latents": kw["latents"] * 2.0} if step == 1 else {}

    plain = tiny_studio.generate("a fox", seed=4, **FAST)
    edited = tiny_studio.generate("a fox", seed=4, callbacks=[double_at_step_1], **FAST)
    assert seen == [0, 1, 2, 3]
    assert not np.array_equal(pixels(plain.image), pixels(edited.image))
    # A callback that returns nothing leaves the image alone.
    watched = tiny_studio.generate("a fox", seed=4, callbacks=[lambda p, s, t, kw: {}], **FAST)
    assert np.array_equal(pixels(plain.image), pixels(watched.image))


def test_progress_reports_every_step_of_every_image(tiny_studio):
    events = []
    tiny_studio.generate("a fox", seed=4, num_images=2, progress=events.append, num_inference_steps=3)
    # Both images share one UNet batch: one report per step covers images 1-2.
    assert [(e.image, e.batch, e.step) for e in events] == [(1, 2, 1), (1, 2, 2), (1, 2, 3)]
    assert events[-1].fraction == 1.0
    tiny_studio.max_batch = 1
    try:
        events.clear()
        tiny_studio.generate("a fox", seed=4, num_images=2, progress=events.append, num_inference_steps=3)
    finally:
        tiny_studio.max_batch = 8
    assert [(e.image, e.step) for e in events] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert events[-1].fraction == 1.0


def test_cancel_stops_at_the_next_step(tiny_studio):
    token = CancelToken()
    steps = []

    def cancel_after_two(pipe, step, t, kw):
        steps.append(step)
        if step == 1:
            token.cancel()
        return {}

    with pytest.raises(GenerationCancelled):
        tiny_studio.generate("a fox", seed=4, num_inference_steps=10, callbacks=[cancel_after_two], cancel=token)
    assert steps == [0, 1]  # the cancel check runs first at step 2 and stops the run


def test_pose_switches_on_the_familys_controlnet_pipeline_and_changes_the_image(family, family_studio):
    plain = family_studio.generate("a fox", seed=4, **FAST)
    from PIL import Image, ImageDraw

    control = Image.new("RGB", (128, 128))
    ImageDraw.Draw(control).line([(64, 10), (64, 120)], fill=(255, 0, 0), width=6)
    config = family_studio.make_config("a fox", seed=4, **FAST)
    posed = family_studio.run(config, control_image=control)
    assert not np.array_equal(pixels(plain.image), pixels(posed.image))
    waving = family_studio.generate("a fox", seed=4, pose="waving", **FAST)
    assert type(family_studio.pipeline("controlnet")).__name__ == family.family.pipelines["controlnet"]
    assert waving.recipe.pose is not None
    assert not np.array_equal(pixels(plain.image), pixels(waving.image))


def test_img2img_and_from_photo_run_the_familys_img2img_pipeline(family, family_studio):
    from PIL import Image

    photo = Image.new("RGB", (64, 64), (200, 40, 40))
    steps = []
    result = family_studio.from_photo(PROMPT, photo, strength=0.5, pose=None, seed=3, num_inference_steps=4,
                                      progress=steps.append)
    assert result.extras["kind"] == "img2img" and result.image.size == (64, 64)
    assert type(family_studio.pipeline("img2img")).__name__ == family.family.pipelines["img2img"]
    assert steps[-1].steps == 2 and steps[-1].step == 2  # diffusers runs int(4 * 0.5) steps


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


def test_fp16_nan_decode_upcasts_the_vae_with_a_warning(fresh_studio):
    """A VAE that overflows in fp16 is retried in fp32 (as SD 1.5's VAE needs at high res)."""
    vae = fresh_studio.components["vae"]
    vae.to(torch.float16)
    latents = torch.full((1, 4, 16, 16), 7e4)  # overflows fp16 inside the decoder
    with pytest.warns(RuntimeWarning, match="upcasting"):
        images = fresh_studio.decode(latents.half())
    assert vae.dtype == torch.float32
    assert images[0].size == (128, 128)


def test_clip_skip_uses_the_penultimate_layer_and_a1111_clip_skip_replays(tiny_studio, tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    enc = tiny_studio.encoder
    te = tiny_studio.components["text_encoder"]
    ids = torch.tensor([[enc.tokenizer.bos_token_id, *enc.tokenize("red scarf"), enc.tokenizer.eos_token_id]
                        + [enc.tokenizer.pad_token_id] * (77 - 2 - len(enc.tokenize("red scarf")))])
    with torch.no_grad():
        states = te(ids, output_hidden_states=True).hidden_states
        expected = te.final_layer_norm(states[-2])
    skipped = enc.encode("red scarf", clip_skip=1).prompt_embeds
    assert torch.equal(skipped, expected)
    assert not torch.equal(skipped, enc.encode("red scarf").prompt_embeds)
    # A1111 writes "Clip skip: 2" for diffusers' clip_skip=1; such an image replays.
    info = PngInfo()
    info.add_text("parameters", "red scarf\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64, "
                                "Model: tiny, Clip skip: 2")
    Image.new("RGB", (64, 64)).save(tmp_path / "a1111.png", pnginfo=info)
    recipe = Result.from_png(tmp_path / "a1111.png").recipe
    assert recipe.clip_skip == 1
    out = tiny_studio.run(recipe)
    assert out.recipe.clip_skip == 1 and out.image.size == (64, 64)


def test_clip_skip_counts_back_from_sdxls_penultimate_layer(tiny_sdxl_studio):
    """SDXL already conditions on the penultimate layer (Pony's "clip skip 2" is clip_skip=None);
    clip_skip=1 goes one layer further back in both encoders."""
    xl = tiny_sdxl_studio
    ids = xl.components["tokenizer_2"](PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        states = xl.components["text_encoder_2"](ids, output_hidden_states=True).hidden_states
    default = xl.encoder.encode(PROMPT, "", clip_skip=None).prompt_embeds[..., 32:]
    skip1 = xl.encoder.encode(PROMPT, "", clip_skip=1).prompt_embeds[..., 32:]
    torch.testing.assert_close(default, states[-2])
    torch.testing.assert_close(skip1, states[-3])


def test_a1111_clip_skip_means_the_same_layer_on_each_family(tiny_sdxl_studio, tiny_studio, tmp_path):
    """A1111 counts layers from the last as 1. SDXL's default is the penultimate layer, A1111's
    "Clip skip: 2" (Pony's advice), so on SDXL clip_skip=1 is written "Clip skip: 3" and a civitai
    recipe saying "Clip skip: 2" reads as the default; on SD 1.x "Clip skip: 2" is clip_skip=1."""
    from charstudio import Result
    from charstudio.metadata import format_parameters, parse_parameters
    from charstudio.models.family import SD1, SDXL

    xl = tiny_sdxl_studio
    sd1 = tiny_studio
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


def test_micro_conditioning_is_set_recorded_and_read_back_by_an_a1111_parser(tiny_sdxl_studio, tiny_studio, tmp_path):
    from PIL import Image

    from charstudio import Result
    from charstudio.metadata import PARAMETERS_KEY, parse_parameters

    xl = tiny_sdxl_studio
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
    sd1 = tiny_studio
    assert sd1.make_config("a cat").original_size is None  # SD 1.x has no micro-conditioning


def test_guidance_defaults_to_the_models_and_a_given_one_wins(fresh_studio):
    from charstudio.models.presets import PRESETS

    assert fresh_studio.default_guidance == PRESETS["tiny"].default_guidance == 7.0
    assert PRESETS["mini"].default_guidance < 7.0  # mini's own, measured (see README)
    fresh_studio.default_guidance = 2.5
    plain = fresh_studio.generate("a girl with red hair", seed=3, **FAST)
    assert plain.recipe.guidance_scale == 2.5
    given = fresh_studio.generate("a girl with red hair", seed=3, guidance_scale=9.0, **FAST)
    assert given.recipe.guidance_scale == 9.0
    assert not np.array_equal(pixels(plain.image), pixels(given.image))  # and the scale reaches the model
    sheet = fresh_studio.sheet("a girl with red hair", ["standing_front", "waving"], seed=3, compute_score=False, **FAST)
    assert all(r.guidance_scale == 2.5 for r in sheet.recipes)


def test_a_requested_dtype_reaches_the_weights_without_a_deprecation_warning():
    """The dtype goes to diffusers under the name the installed release expects (no torch_dtype warning)."""
    import warnings

    from charstudio import Studio

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        studio = Studio.from_pretrained("mini", device="cpu", dtype="bf16")  # a diffusers folder
        studio.controlnet  # noqa: B018 - loaded on first use, through its own from_pretrained call
    for name in ("unet", "vae", "text_encoder", "controlnet"):
        assert next(studio.components[name].parameters()).dtype == torch.bfloat16, name
    assert not [w for w in seen if "torch_dtype" in str(w.message)]
