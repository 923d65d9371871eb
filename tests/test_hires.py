"""The hires fix (charstudio.workflows.hires): the recipe field, the two passes on mini, the
rebuild from a PNG, the A1111 fields and the CLI flags."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from charstudio.config import GenerationConfig
from charstudio.errors import ConfigError
from charstudio.metadata import format_parameters, parse_parameters
from charstudio.workflows.hires import hires_size, schedule_length, second_pass_config


def recipe(**changes):
    base = dict(prompt="a girl, long red hair", width=64, height=64, num_inference_steps=8)
    base.update(changes)
    return GenerationConfig(**base)


def laplacian_energy(image) -> float:
    """Mean squared 4-neighbour Laplacian of the grey picture: high-frequency energy."""
    a = np.asarray(image.convert("L"), dtype=np.float64)
    lap = 4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]
    return float((lap ** 2).mean())


# -- the recipe field ----------------------------------------------------------------------------

def test_a_factor_becomes_the_full_settings_and_survives_json():
    config = recipe(hires=1.5)
    assert config.hires == {"scale": 1.5, "strength": 0.4, "steps": None, "upscaler": "pixel"}
    again = GenerationConfig.from_dict(config.to_dict())
    assert again.hires == config.hires
    assert hires_size(config) == (96, 96)
    # A1111's rule: int(side * scale), then whole 8 px blocks
    assert hires_size(recipe(width=64, height=96, hires=1.3)) == (80, 120)


@pytest.mark.parametrize("value, field", [
    (1.0, "hires.scale"), (0.5, "hires.scale"), (True, "hires"), ("2x", "hires"),
    ({"scale": 1.5, "strength": 0.0}, "hires.strength"), ({"scale": 1.5, "strength": 1.2}, "hires.strength"),
    ({"scale": 1.5, "steps": 0}, "hires.steps"), ({"scale": 1.5, "steps": 2.5}, "hires.steps"),
    ({"scale": 1.5, "upscaler": "esrgan"}, "hires.upscaler"), ({"scale": 1.5, "denoise": 0.3}, "hires.denoise"),
    ({"strength": 0.4}, "hires.scale"),
    (1.05, "hires.scale"),  # 64 * 1.05 rounds down to 64 again
    ({"scale": 1.5, "strength": 0.001, "steps": 10}, "hires.strength"),  # a 10000-step schedule
])
def test_bad_settings_are_refused_in_one_line_naming_the_field(value, field):
    with pytest.raises(ConfigError) as err:
        recipe(hires=value)
    assert err.value.field == field and "\n" not in str(err.value)


def test_the_schedule_runs_exactly_the_asked_steps():
    for steps in (1, 4, 10, 25):
        for strength in (0.3, 0.4, 0.45, 0.7, 1.0):
            length = schedule_length(steps, strength)
            assert min(int(length * strength), length) == steps  # diffusers' img2img rule
            assert int((length - 1) * strength) < steps or length == steps  # and no longer than needed


def test_sdxl_micro_conditioning_follows_the_hires_size(tiny_sdxl):
    config = tiny_sdxl.make_config("a cat", seed=1, width=128, height=64, hires=1.5)
    assert config.original_size == (64, 128) and config.target_size == (64, 128)
    second = second_pass_config(tiny_sdxl, config)
    assert (second.width, second.height) == (192, 96)
    # the second pass is told it draws a whole, uncropped picture of the hires size (as A1111 does)
    assert second.original_size == (96, 192) and second.target_size == (96, 192)
    assert second.crops_coords_top_left == (0, 0)
    assert second.hires is None and second.num_images == 1


# -- the two passes on mini ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def mini(one_thread):
    from charstudio import Studio

    return Studio.from_pretrained("mini", device="cpu")


@pytest.fixture(scope="module")
def tiny_sdxl(one_thread):
    from charstudio import Studio

    return Studio.from_pretrained("tiny-sdxl", device="cpu")


SEEDS = (0, 1, 2)
HIRES = {"scale": 1.5, "strength": 0.4, "steps": 4, "upscaler": "pixel"}


@pytest.fixture(scope="module")
def mini_hires(mini):
    runs = []
    for seed in SEEDS:
        records = []
        result = mini.generate("rin", seed=seed, num_inference_steps=8, pose="standing_front", hires=HIRES,
                               progress=records.append)
        runs.append((result, records))
    return runs


def test_hires_is_the_upscaled_size_keeps_the_layout_and_is_sharper_than_a_resize(mini_hires):
    from charstudio.mini.measure import foreground, iou

    for result, _ in mini_hires:
        big, first = result.image, result.extras["first_pass"][0]
        assert first.size == (64, 64) and big.size == (96, 96)
        assert (result.recipe.width, result.recipe.height) == (64, 64)  # the recipe keeps the first pass's size
        resized = first.resize(big.size, Image.LANCZOS)
        # measured over seeds 0-3 (README "Hires fix"): IoU >= 0.88, Laplacian energy >= 3.0x
        assert iou(foreground(big), foreground(resized)) >= 0.8
        assert laplacian_energy(big) >= 2.0 * laplacian_energy(resized)


def test_the_first_pass_is_the_plain_picture_and_progress_reports_both_passes(mini, mini_hires):
    result, records = mini_hires[0]
    # (the first pass is not a final picture: it carries no watermark)
    plain = mini.generate("rin", seed=SEEDS[0], num_inference_steps=8, pose="standing_front", watermark=False)
    assert np.array_equal(np.asarray(result.extras["first_pass"][0]), np.asarray(plain.image))
    assert [(p.step, p.steps) for p in records] == [(s, 8) for s in range(1, 9)] + [(s, 4) for s in range(1, 5)]
    assert "controlnet_img2img" in mini._pipelines  # the pose guides the second pass too


def test_a_saved_hires_picture_rebuilds_bit_exactly_from_its_png(mini, mini_hires, tmp_path):
    from charstudio.result import Result

    result, _ = mini_hires[1]
    [path] = result.save(tmp_path)
    loaded = Result.from_png(path)
    assert loaded.recipe.hires == HIRES and loaded.image.size == (96, 96)
    again = mini.run(loaded.recipe)
    assert np.array_equal(np.asarray(again.image), np.asarray(loaded.image))
    text = Image.open(path).text["parameters"]
    assert "Size: 64x64" in text and "Denoising strength: 0.4" in text
    assert "Hires upscale: 1.5, Hires steps: 4, Hires upscaler: Lanczos" in text


def test_the_latent_upscaler_starts_from_the_first_pass_latents_and_rebuilds(tiny_sdxl):
    # diffusers' img2img pipelines take a 4-channel tensor as latents (prepare_latents); SDXL's too
    hires = {"scale": 1.5, "strength": 0.5, "steps": 2, "upscaler": "latent"}
    result = tiny_sdxl.generate("a cat", seed=5, num_inference_steps=3, hires=hires)
    assert result.image.size == (192, 192) and result.extras["latents"][0].shape[-2:] == (24, 24)
    again = tiny_sdxl.run(result.recipe)
    assert np.array_equal(np.asarray(again.image), np.asarray(result.image))
    pixel = tiny_sdxl.generate("a cat", seed=5, num_inference_steps=3, hires={**hires, "upscaler": "pixel"})
    assert not np.array_equal(np.asarray(pixel.image), np.asarray(result.image))


def test_too_large_a_factor_is_refused_before_any_drawing(mini):
    calls = []
    with pytest.raises(ConfigError) as err:
        mini.generate("rin", seed=1, hires=2.5, progress=calls.append)
    assert err.value.field == "hires.scale" and "160x160" in str(err.value) and "allow_large" in str(err.value)
    assert "\n" not in str(err.value) and calls == []


# -- A1111 parameters ----------------------------------------------------------------------------

A1111_TEXT = """masterpiece, 1girl, red hair
Negative prompt: lowres
Steps: 28, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 123, Size: 832x1216, Model hash: 1d3f, \
Model: noob, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 1.5, Hires steps: 15, Hires upscaler: Latent, \
Version: v1.10.1"""


def test_a1111_hires_fields_read_into_the_recipe():
    fields = parse_parameters(A1111_TEXT)
    assert (fields["width"], fields["height"]) == (832, 1216)  # A1111's Size is the first pass
    assert fields["hires"] == {"scale": 1.5, "strength": 0.45, "steps": 15, "upscaler": "latent"}
    config = GenerationConfig(**fields)
    assert hires_size(config) == (1248, 1824)
    # no "Hires steps" (A1111 leaves it out at 0) means the first pass's count; a model upscaler
    # is read as Lanczos
    text = A1111_TEXT.replace("Hires steps: 15, ", "").replace("Hires upscaler: Latent", "Hires upscaler: 4x-UltraSharp")
    assert parse_parameters(text)["hires"] == {"scale": 1.5, "strength": 0.45, "steps": None, "upscaler": "pixel"}
    assert "hires" not in parse_parameters(A1111_TEXT.replace("Hires upscale: 1.5, ", "").replace(
        "Hires steps: 15, Hires upscaler: Latent, ", ""))


def test_our_parameters_text_round_trips_the_hires_fields():
    config = recipe(hires={"scale": 2, "strength": 0.55, "upscaler": "latent"})
    text = format_parameters(config)
    assert "Denoising strength: 0.55" in text and "Hires upscale: 2, Hires upscaler: Latent" in text
    assert "Hires steps" not in text
    assert GenerationConfig(**parse_parameters(text)).hires == config.hires
    assert "Hires" not in format_parameters(recipe()) and "Denoising" not in format_parameters(recipe())


# -- CLI -----------------------------------------------------------------------------------------

def test_cli_generate_and_sheet_draw_hires(tmp_path, one_thread, capsys):
    from charstudio.cli import main

    out = tmp_path / "gen"
    assert main(["generate", "a cat", "--model", "tiny", "--steps", "2", "--seed", "4", "--width", "64", "--height",
                 "64", "--hires", "1.5", "--hires-strength", "0.5", "--hires-steps", "1", "--out", str(out)]) == 0
    [png] = sorted(out.glob("*.png"))
    image = Image.open(png)
    assert image.size == (96, 96)
    assert "Hires upscale: 1.5, Hires steps: 1, Hires upscaler: Lanczos" in image.text["parameters"]
    sheet = tmp_path / "sheet"
    assert main(["sheet", "a cat", "--poses", "standing_front,walking", "--model", "tiny", "--steps", "2",
                 "--width", "64", "--height", "64", "--hires", "1.5", "--hires-steps", "1",
                 "--hires-upscaler", "latent", "--out", str(sheet)]) == 0
    pictures = [Image.open(p) for p in sorted(sheet.glob("*.png")) if p.name != "grid.png"]
    assert len(pictures) == 2 and all(p.size == (96, 96) for p in pictures)
    assert all("Hires upscaler: Latent" in p.text["parameters"] for p in pictures)


@pytest.mark.parametrize("flags, field", [
    (["--hires", "1"], "--hires"), (["--hires", "1.5", "--hires-strength", "1.5"], "--hires-strength"),
    (["--hires", "1.5", "--hires-steps", "0"], "--hires-steps"), (["--hires-strength", "0.4"], "--hires-strength"),
    (["--hires", "5"], "hires.scale"),  # 320 px on tiny (128 px native): over its 256 px limit
])
def test_cli_refuses_bad_hires_flags_in_one_line_and_writes_nothing(tmp_path, capsys, flags, field):
    from charstudio.cli import main

    out = tmp_path / "out"
    assert main(["generate", "a cat", "--model", "tiny", "--steps", "2", "--width", "64", "--height", "64",
                 *flags, "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert field in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_hires_png_is_detailed_and_inpainted_with_its_own_recipe(mini, tmp_path):
    """A hires picture is larger than its recipe's first-pass size: it is still recognised as the
    recipe's picture (no prompt needed), and the inpainting re-runs from its PNG."""
    from charstudio import Result

    big = mini.generate("a girl with long red hair", pose="standing_front", seed=1, num_inference_steps=4, hires=1.5)
    path = str(big.save(tmp_path)[0])
    detailed = mini.detail(path, parts=("face",), steps=4)
    assert detailed.image.size == (96, 96) and detailed.recipe.hires == big.recipe.hires
    inpainted = mini.inpaint(path, mask="hair", prompt="a girl with long blue hair", num_inference_steps=4)
    assert inpainted.image.size == (96, 96) and "recipe" in inpainted.recipe.inpaint["source"]
    again = mini.run(Result.from_png(inpainted.save(tmp_path / "again")[0]).recipe)
    assert np.array_equal(np.asarray(again.image), np.asarray(inpainted.image))
