"""Few-step LoRA presets and draft mode (charstudio.speed.presets / .draft): the mechanics on tiny and
tiny-sdxl with LoRA files in each preset's key layout, loaded from a path (nothing is downloaded here)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from helpers import TinyFamily, lora_model, save_lora_model

SIZE = 64


def plain_copy(src, dst):
    """The file's tensors without charstudio's header: what a hub file holds (keys and alphas only)."""
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(src)), str(dst))
    return dst


@pytest.fixture(scope="module")
def kohya_sd1(tmp_path_factory):
    """A UNet-only LoRA for tiny in the kohya layout (lora_unet_*.lora_down/lora_up + alpha), as
    LCM-LoRA, SDXL-Lightning and Hyper-SD ship theirs, under Hyper-SD15's 4-step file name."""
    family = TinyFamily("sd1")
    folder = tmp_path_factory.mktemp("hyper")
    files = save_lora_model(family, lora_model(family, text_encoders=False), folder / "written", "hyper")
    return plain_copy(files["kohya"], folder / "Hyper-SD15-4steps-lora.safetensors")


@pytest.fixture(scope="module")
def peft_sdxl(tmp_path_factory):
    """A UNet-only LoRA for tiny-sdxl in diffusers' peft layout (unet.*.lora_A/lora_B, no header),
    under DMD2's file name."""
    family = TinyFamily("sdxl")
    folder = tmp_path_factory.mktemp("dmd2")
    files = save_lora_model(family, lora_model(family, text_encoders=False), folder / "written", "dmd2")
    return plain_copy(files["diffusers"], folder / "dmd2_sdxl_4step_lora_fp16.safetensors")


def test_each_preset_is_consistent_with_its_scheduler_and_licence():
    from charstudio.schedulers import SCHEDULERS
    from charstudio.speed.presets import PRESETS

    expected = {"dmd2", "sdxl-lightning-2step", "sdxl-lightning-4step", "sdxl-lightning-8step", "hyper-sd15-4step",
                "hyper-sdxl-8step", "lcm-sd15", "lcm-sdxl", "mini-lcm"}
    assert expected <= set(PRESETS)
    for p in PRESETS.values():
        assert p.scheduler in SCHEDULERS and p.steps >= 1 and p.licence.split()[0]
        assert p.timesteps is None or len(p.timesteps) == p.steps
    dmd2 = PRESETS["dmd2"]
    assert (dmd2.family, dmd2.scheduler, dmd2.timesteps, dmd2.guidance_scale) == ("sdxl", "lcm", (999, 749, 499, 249), 0)
    assert dmd2.non_commercial and not PRESETS["sdxl-lightning-4step"].non_commercial
    assert PRESETS["sdxl-lightning-4step"].scheduler == "euler-trailing"
    assert PRESETS["hyper-sd15-4step"].scheduler == "ddim-trailing"


def test_a_trailing_sampler_is_written_as_a1111_does_and_read_back():
    from charstudio.recipe.config import GenerationConfig
    from charstudio.recipe.metadata import format_parameters, parse_parameters
    from charstudio.schedulers import make_scheduler

    config = GenerationConfig(prompt="a girl", num_inference_steps=4, guidance_scale=0, scheduler="euler-trailing")
    text = format_parameters(config)
    assert "Sampler: Euler, Schedule type: SGM Uniform," in text
    assert parse_parameters(text)["scheduler"] == "euler-trailing"
    assert parse_parameters(text.replace("Sampler: Euler", "Sampler: Heun"))["scheduler"] == "heun"  # none of its own
    base = {"num_train_timesteps": 1000, "timestep_spacing": "leading"}
    scheduler = make_scheduler("euler-trailing", base)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 749, 499, 249]  # trailing spacing, as SDXL-Lightning's card asks


def test_a_lora_draft_records_its_preset_reruns_from_its_png_and_finishes(kohya_sd1, tmp_path, caplog):
    from charstudio import Studio
    from charstudio.result import Result
    from charstudio.speed.draft import describe, finish
    from charstudio.speed.presets import load_preset

    studio = Studio.from_pretrained("tiny", device="cpu")
    with caplog.at_level(logging.INFO, logger="charstudio.speed.presets"):
        adapter = load_preset(studio, "hyper-sd15-4step", kohya_sd1.parent, on=False)
    assert "openrail++" in caplog.text and adapter in studio.loaded_loras
    # 1. The recipe records the preset, its sampler, steps, CFG, LoRA and licence; the full settings under draft.full.
    draft = studio.make_config("a girl", seed=5, width=SIZE, height=SIZE, num_inference_steps=12, speed="draft",
                               watermark=False)
    assert (draft.num_inference_steps, draft.scheduler, draft.guidance_scale) == (4, "ddim-trailing", 0.0)
    assert draft.loras == {adapter: 1.0} and studio.active_loras == {}
    assert draft.draft["preset"] == "hyper-sd15-4step" and draft.draft["licence"].startswith("openrail++")
    assert draft.draft["full"]["num_inference_steps"] == 12 and draft.draft["full"]["scheduler"] == "dpm++2m-karras"
    assert describe(draft) == "draft: hyper-sd15-4step LoRA, 4 steps, DDIM SGM Uniform, CFG 1"
    # 2. The PNG re-runs it, the LoRA loading itself from the recorded file.
    first = studio.run(draft)
    path = first.save(tmp_path)[0]
    studio.unload_loras([adapter])
    again = studio.run(Result.from_png(path).recipe)
    assert adapter in studio.loaded_loras
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    # 3. Finish: the same seed and prompt with the settings drafted from, without the draft LoRA.
    full = finish(again.recipe)
    assert (full.seed, full.prompt, full.num_inference_steps, full.scheduler) == (5, "a girl", 12, "dpm++2m-karras")
    assert full.guidance_scale == draft.draft["full"]["guidance_scale"] and full.loras == {} and full.draft is None


@pytest.mark.filterwarnings("ignore:.*gives poor pictures")  # tiny-sdxl at 64 px: only the mechanics count
def test_dmd2_timesteps_reach_the_scheduler_and_its_licence_warns(peft_sdxl, caplog):
    from charstudio.speed.presets import load_preset

    studio = TinyFamily("sdxl").studio()
    with caplog.at_level(logging.WARNING, logger="charstudio.speed.presets"):
        load_preset(studio, "dmd2", peft_sdxl)
    assert any(r.levelno == logging.WARNING and "CC-BY-NC-4.0" in r.getMessage() for r in caplog.records)
    config = studio.make_config("a girl", seed=1, width=SIZE, height=SIZE, speed="draft", watermark=False)
    assert config.timesteps == [999, 749, 499, 249] and config.scheduler == "lcm" and config.draft["preset"] == "dmd2"
    seen = []

    def record(pipe, step, t, kwargs):
        seen.append((type(pipe.scheduler).__name__, int(t)))
        return {}

    studio.run(config, callbacks=[record])
    assert seen == [("LCMScheduler", t) for t in (999, 749, 499, 249)]


def test_the_other_familys_preset_and_a_missing_file_are_refused(kohya_sd1, peft_sdxl, tiny_studio):
    from charstudio.errors import ConfigError, InputFileError
    from charstudio.speed.presets import load_preset

    with pytest.raises(ConfigError, match="sdxl LoRA but 'tiny' is sd1"):
        load_preset(tiny_studio, "dmd2", peft_sdxl)
    with pytest.raises(ConfigError, match="sdxl LoRA but 'tiny' is sd1"):
        tiny_studio.make_config("a girl", draft_preset="sdxl-lightning-4step")
    with pytest.raises(InputFileError, match="huggingface-cli download latent-consistency/lcm-lora-sdv1-5 "
                                             "pytorch_lora_weights.safetensors"):
        load_preset(tiny_studio, "lcm-sd15")
    with pytest.raises(ConfigError, match="set_speed"):
        tiny_studio.make_config("a girl", speed="max")
    assert tiny_studio.loaded_loras == {}


def test_without_a_few_step_lora_the_draft_caches_features_with_fewer_steps(tiny_studio):
    from charstudio.speed.draft import finish

    config = tiny_studio.make_config("a girl", seed=2, num_inference_steps=20, speed="draft")
    assert config.feature_cache == {"interval": 3, "branch": 0} and config.num_inference_steps == 10
    assert config.draft["method"] == "cache" and config.loras == {}
    back = finish(config)
    assert (back.num_inference_steps, back.feature_cache, back.draft) == (20, None, None)


def test_the_cli_drafts_with_a_preset_file_says_so_and_finishes(kohya_sd1, tmp_path, capsys):
    from a1111_oracle import read_png
    from PIL import Image

    from charstudio.cli import main
    from charstudio.recipe.metadata import parse_parameters
    from charstudio.result import Result

    out, done = tmp_path / "draft", tmp_path / "full"
    assert main(["generate", "a girl", "--model", "tiny", "--width", "64", "--height", "64", "--seed", "4", "--steps",
                 "12", "--draft-preset", "hyper-sd15-4step", "--draft-file", str(kohya_sd1), "--no-watermark",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "draft: hyper-sd15-4step LoRA, 4 steps, DDIM SGM Uniform, CFG 1" in err
    assert "licence of hyper-sd15-4step: openrail++" in err
    picture = next(out.glob("*.png"))
    assert Result.from_png(picture).recipe.draft["preset"] == "hyper-sd15-4step"
    a1111 = parse_parameters(Image.open(picture).text["parameters"])  # the A1111 text of a draft stays readable
    assert (a1111["num_inference_steps"], a1111["scheduler"], a1111["guidance_scale"]) == (4, "ddim-trailing", 0.0)
    other = read_png(picture)  # and an independent A1111 reader (sd-parsers) reads it in A1111's meanings
    assert (other["Sampler"], other["Schedule type"], int(other["Steps"])) == ("DDIM", "SGM Uniform", 4)
    assert main(["finish", str(picture), "-o", str(done)]) == 0  # the recipe's model (tiny), its own seed
    full = Result.from_png(next(done.glob("*.png"))).recipe
    assert (full.num_inference_steps, full.scheduler, full.seed, full.draft, full.loras) == (
        12, "dpm++2m-karras", 4, None, {})
    assert main(["presets"]) == 0 and "CC-BY-NC-4.0" in capsys.readouterr().out
