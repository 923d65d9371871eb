"""The one img2img steps guard (issue #34): every img2img-like pass runs at least one step where
steps x strength is under 1, its recipe records the steps that ran, and the recipe re-runs the
same picture. Also: an absurd --hires factor is refused in one line before the model loads."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from charstudio.config import GenerationConfig
from charstudio.errors import ConfigError
from helpers import pixels as arr

pytestmark = pytest.mark.usefixtures("one_thread")


class Steps:
    """A progress hook that keeps every StepProgress: how many steps ran, and of how many."""

    def __init__(self):
        self.seen = []

    def __call__(self, p):
        self.seen.append(p)

    @property
    def ran(self) -> int:
        return len(self.seen)


@pytest.fixture(scope="module")
def drawn(tiny_studio):
    """A 64 px tiny picture with a pose (so the detail pass places its boxes without a detector)."""
    return tiny_studio.generate("a cat", seed=3, num_inference_steps=1, width=64, height=64, pose="standing_front")


# -- the rule ------------------------------------------------------------------------------------

def test_the_guard_runs_one_step_at_the_asked_noise_level_and_leaves_the_rest_alone():
    from charstudio.workflows.hires import img2img_steps

    # diffusers runs the last min(int(schedule * strength), schedule) steps of the schedule
    def diffusers_runs(schedule: int, strength: float) -> int:
        return min(int(schedule * strength), schedule)

    for steps, strength in ((10, 0.35), (20, 0.05), (4, 0.25), (1, 1.0), (25, 0.6)):
        guard = img2img_steps(steps, strength)
        assert (guard.schedule, guard.recorded) == (steps, steps)  # untouched: old recipes re-run as before
        assert guard.run == diffusers_runs(steps, strength)
    for steps, strength in ((1, 0.1), (2, 0.1), (2, 0.35), (1, 0.4), (9, 0.1), (3, 0.3)):
        guard = img2img_steps(steps, strength)
        assert guard.run == guard.recorded == 1
        assert diffusers_runs(guard.schedule, strength) == 1  # one step, from strength's own noise level
        assert diffusers_runs(guard.schedule - 1, strength) == 0  # the shortest such schedule
        assert img2img_steps(guard.recorded, strength) == guard  # the recorded recipe gets the same run
    with pytest.raises(ConfigError) as err:
        img2img_steps(2, 1e-4, "detail.strength")  # not one step even of a 1000-step schedule
    assert err.value.field == "detail.strength" and "\n" not in str(err.value)


# -- each img2img-like path at steps=1 on tiny -----------------------------------------------------

def test_from_photo_at_one_step_and_low_strength(tiny_studio, drawn):
    steps = Steps()
    out = tiny_studio.from_photo("a cat", drawn.image, strength=0.3, pose=None, seed=5, num_inference_steps=1,
                                 progress=steps)
    assert out.image.size == (64, 64)
    assert out.recipe.num_inference_steps == 1 and steps.ran == 1 and steps.seen[-1].steps == 1
    again = tiny_studio.run(out.recipe, init_image=drawn.image, strength=out.extras["img2img_strength"])
    assert np.array_equal(arr(again.image), arr(out.image))
    # 2 steps at 0.3 run none either: one runs, recorded as 1, the same picture
    two = tiny_studio.from_photo("a cat", drawn.image, strength=0.3, pose=None, seed=5, num_inference_steps=2)
    assert two.recipe.num_inference_steps == 1 and np.array_equal(arr(two.image), arr(out.image))
    # with a pose (ControlNet img2img) too
    posed = tiny_studio.from_photo("a cat", drawn.image, strength=0.2, pose="standing_front", seed=5,
                                   num_inference_steps=2)
    assert posed.recipe.num_inference_steps == 1 and posed.extras["kind"] == "controlnet_img2img"


def test_an_ordinary_img2img_recipe_keeps_its_steps(tiny_studio, drawn):
    steps = Steps()
    out = tiny_studio.from_photo("a cat", drawn.image, strength=0.5, pose=None, seed=5, num_inference_steps=4,
                                 progress=steps)
    assert out.recipe.num_inference_steps == 4 and steps.ran == 2  # int(4 * 0.5): unchanged


def test_inpaint_at_one_step_and_low_strength_re_runs_from_its_png(tiny_studio, drawn, tmp_path):
    from charstudio import Result

    steps = Steps()
    out = tiny_studio.inpaint(drawn, mask=(8, 8, 40, 40), prompt="a red fox", strength=0.1, num_inference_steps=1,
                              progress=steps)
    assert out.image.size == (64, 64) and steps.ran == 1
    assert out.recipe.num_inference_steps == 1 and out.recipe.inpaint["strength"] == 0.1
    again = tiny_studio.run(Result.from_png(out.save(tmp_path)[0]).recipe)  # draws the source again, then inpaints
    assert np.array_equal(arr(again.image), arr(out.image))


def test_the_inpainting_pipeline_at_one_step_and_low_strength(tmp_path):
    """A 9-channel UNet runs diffusers' inpainting pipeline: the same guard."""
    import torch
    from diffusers import UNet2DConditionModel

    from charstudio import Result, Studio

    base = Studio.from_pretrained("tiny", device="cpu")
    torch.manual_seed(0)
    nine = UNet2DConditionModel.from_config({**base.components["unet"].config, "in_channels": 9})
    studio = Studio({**base.components, "unet": nine}, model_id=base.model_id, device=base.device, dtype=base.dtype,
                    default_size=base.default_size, default_steps=2, default_guidance=base.default_guidance)
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    steps = Steps()
    out = studio.inpaint(picture, mask=(16, 16, 48, 48), prompt="a red fox", seed=3, strength=0.1,
                         num_inference_steps=1, progress=steps)
    assert out.extras["kind"] == "inpaint" and steps.ran == 1
    assert out.recipe.num_inference_steps == 1
    again = studio.run(Result.from_png(out.save(tmp_path)[0]).recipe, init_image=picture)
    assert np.array_equal(arr(again.image), arr(out.image))


def test_detail_at_low_steps_records_the_step_that_ran_and_re_runs(tiny_studio, drawn, tmp_path):
    from charstudio import Result

    out = tiny_studio.detail(drawn, parts=("face",), steps=2, strength=0.35)
    assert out.image.size == (64, 64) and not np.array_equal(arr(out.image), arr(drawn.image))
    assert out.recipe.detail["steps"] == 1
    again = tiny_studio.run(Result.from_png(out.save(tmp_path)[0]).recipe)
    assert np.array_equal(arr(again.image), arr(out.image))
    # the pass recorded on the recipe itself, steps defaulting to the recipe's 1
    inline = tiny_studio.generate("a cat", seed=3, num_inference_steps=1, width=64, height=64,
                                  pose="standing_front", detail={"parts": ["face"]})
    assert inline.recipe.detail["steps"] == 1
    assert np.array_equal(arr(tiny_studio.run(inline.recipe).image), arr(inline.image))


def test_hires_at_one_step(tiny_studio):
    out = tiny_studio.generate("a cat", seed=3, num_inference_steps=1, width=64, height=64,
                               hires={"scale": 1.5, "strength": 0.3})
    assert out.image.size == (96, 96)
    assert out.recipe.num_inference_steps == 1 and out.recipe.hires["steps"] is None  # the second pass runs 1
    assert np.array_equal(arr(tiny_studio.run(out.recipe).image), arr(out.image))


def test_sheet_edit_passes_at_one_step(tiny_studio):
    sheet = tiny_studio.sheet("a cat", ["standing_front", "walking"], seed=2, num_inference_steps=2, width=64,
                              height=64, detail={"parts": ["face"], "strength": 0.3}, compute_score=False)
    assert len(sheet.images) == 2
    for image, recipe in zip(sheet.images, sheet.recipes):
        assert recipe.detail["steps"] == 1  # 2 x 0.3: one step ran
        assert np.array_equal(arr(tiny_studio.run(recipe).image), arr(image))


# -- the CLI and the app ---------------------------------------------------------------------------

def test_cli_detail_and_inpaint_at_low_steps(tmp_path, capsys):
    from charstudio import Result
    from charstudio.cli import main

    src = tmp_path / "src"
    assert main(["generate", "a cat", "--model", "tiny", "--steps", "1", "--seed", "4", "--width", "64",
                 "--height", "64", "--pose", "standing_front", "--out", str(src)]) == 0
    [source] = sorted(src.glob("*.png"))
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["detail", str(source), "--model", "tiny", "--parts", "face", "--steps", "2",
                 "--out", str(out)]) == 0
    [detailed] = [p for p in capsys.readouterr().out.split() if p.endswith(".png")]
    assert Result.from_png(detailed).recipe.detail["steps"] == 1
    assert main(["inpaint", str(source), "--model", "tiny", "--mask", "0,0,32,32", "--prompt", "a red fox",
                 "--steps", "1", "--strength", "0.1", "--out", str(out)]) == 0
    [inpainted] = [p for p in capsys.readouterr().out.split() if p.endswith(".png")]
    recipe = Result.from_png(inpainted).recipe
    assert recipe.num_inference_steps == 1 and recipe.inpaint["strength"] == 0.1
    assert Image.open(inpainted).size == (64, 64)


def test_the_workflows_app_detail_pass_at_low_steps(tiny_studio):
    pytest.importorskip("ipywidgets")
    from charstudio.ui import WorkflowsApp

    app = WorkflowsApp(tiny_studio, steps=2, prompt="a cat")
    app.workflow.value = "detail"
    app.seed.value = 3
    app.run_button.click()
    assert app.wait(600)
    assert "done" in app.status.text, app.status.text
    assert app.result.recipe.detail["steps"] == 1


# -- the hires factor ------------------------------------------------------------------------------

@pytest.mark.parametrize("factor", ["1e308", "inf", "nan", "2000"])
def test_cli_refuses_an_absurd_hires_factor_in_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch,
                                                                                factor):
    from charstudio import Studio
    from charstudio.cli import main

    loads = []
    monkeypatch.setattr(Studio, "from_pretrained", classmethod(lambda cls, *a, **k: loads.append(a) or 1 / 0))
    out = tmp_path / "out"
    assert main(["generate", "a cat", "--model", "tiny", "--steps", "2", "--hires", factor, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--hires" in err and len(err.splitlines()) == 1, err
    assert loads == [] and not out.exists()


@pytest.mark.parametrize("value", [1e308, {"scale": 1e308}, 1024.0, {"scale": 1.5, "strength": 5e-324}])
def test_a_recipe_with_an_absurd_hires_setting_is_refused_naming_the_field(value):
    with pytest.raises(ConfigError) as err:
        GenerationConfig(prompt="a cat", width=64, height=64, num_inference_steps=2, hires=value)
    assert err.value.field.startswith("hires.") and "\n" not in str(err.value)
