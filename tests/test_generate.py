"""Generation core: determinism, recipes, parity with plain diffusers, long prompts, hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charstudio import CancelToken, GenerationCancelled, Result
from charstudio.schedulers import SCHEDULERS, make_scheduler
from a1111_oracle import assert_png_matches_recipe
from helpers import pixels

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only slow them down

FAST = dict(num_inference_steps=4)


def test_same_seed_same_image_and_different_seed_differs(tiny_studio):
    a = tiny_studio.generate("a knight in red armour", seed=11, **FAST)
    b = tiny_studio.generate("a knight in red armour", seed=11, **FAST)
    c = tiny_studio.generate("a knight in red armour", seed=12, **FAST)
    assert np.array_equal(pixels(a.image), pixels(b.image))
    assert not np.array_equal(pixels(a.image), pixels(c.image))


def test_matches_plain_diffusers_on_the_same_model(tiny_studio):
    """Our path (own prompt encoding, own decode) gives the very pixels diffusers gives."""
    ours = tiny_studio.generate("a girl with red hair", negative_prompt="blurry", seed=5, guidance_scale=6.0,
                                scheduler="euler", **FAST)
    pipe = tiny_studio.pipeline("txt2img")
    pipe.scheduler = make_scheduler("euler", tiny_studio.base_scheduler_config)
    plain = pipe("a girl with red hair", negative_prompt="blurry", num_inference_steps=4, guidance_scale=6.0,
                 width=128, height=128, generator=torch.Generator().manual_seed(5)).images[0]
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


def test_long_prompt_is_chunked_not_truncated(tiny_studio):
    enc = tiny_studio.encoder
    short = "a girl with red hair"
    long = short + ", " + ", ".join(f"detail number {i}" for i in range(20))
    assert enc.count_tokens(long) > 150  # the tiny tokenizer is per character
    e = enc.encode(long, "blurry")
    assert e.num_chunks == -(-enc.count_tokens(long) // 75)
    assert e.prompt_embeds.shape[1] == 77 * e.num_chunks == e.negative_prompt_embeds.shape[1]
    # Words past token 75 change the conditioning (they would be silently dropped by truncation).
    e2 = enc.encode(long[:-1] + "X", "blurry")
    assert not torch.equal(e.prompt_embeds, e2.prompt_embeds)
    # And the long prompt generates.
    out = tiny_studio.generate(long, seed=1, **FAST)
    assert out.image.size == (128, 128)


def test_short_prompt_embedding_matches_diffusers_encode_prompt(tiny_studio):
    pipe = tiny_studio.pipeline("txt2img")
    ref, _ = pipe.encode_prompt("red scarf", "cpu", 1, False)
    ours = tiny_studio.encoder.encode("red scarf").prompt_embeds
    assert torch.equal(ref, ours)


# The diffusers class and options each name must run (written out here, not read from SCHEDULERS).
EXPECTED_SCHEDULERS = {
    "euler-a": ("EulerAncestralDiscreteScheduler", {}), "euler": ("EulerDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}), "unipc": ("UniPCMultistepScheduler", {}), "lcm": ("LCMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}), "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
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


def test_pose_switches_on_controlnet_and_changes_the_image(tiny_studio):
    plain = tiny_studio.generate("a fox", seed=4, **FAST)
    from PIL import Image, ImageDraw

    control = Image.new("RGB", (128, 128))
    ImageDraw.Draw(control).line([(64, 10), (64, 120)], fill=(255, 0, 0), width=6)
    config = tiny_studio.make_config("a fox", seed=4, **FAST)
    posed = tiny_studio.run(config, control_image=control)
    assert not np.array_equal(pixels(plain.image), pixels(posed.image))


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
