"""ExploreApp without a browser: set widget values, click, check what the core got and what shows."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from charstudio.ui.explore import ExploreApp  # noqa: E402

STEPS = 2


@pytest.fixture
def app(tiny_studio, run_spy, tmp_path):
    """An app over the shared tiny studio whose `run` records every config it receives."""
    received = run_spy
    a = ExploreApp(tiny_studio, steps=STEPS, preview_every=1, output_dir=str(tmp_path / "out"))
    a.received = received
    a.width.value = a.height.value = 64  # small pictures keep the tests fast
    yield a
    a.wait()


def run(app, button):
    button.click()
    assert app.wait(120), "the run did not finish"


def test_generate_turns_controls_into_the_recipe(app):
    app.card.value = "aiko"
    app.prompt.value = "smiling"
    app.style.value = "watercolor"
    app.negative.value = "blurry"
    app.seed.value, app.lock_seed.value = 1234, True
    app.guidance.value = 5.5
    app.scheduler.value = "euler"
    app.select_poses(["waving"])
    app.pose_strength.value = 0.75
    run(app, app.generate_button)

    assert app.status.level == "ok", app.status.text
    assert len(app.received) == 1
    config, kwargs = app.received[0]
    assert config.character == "aiko" and config.style == "watercolor"
    assert "smiling" in config.prompt and "watercolor" in config.prompt
    assert config.negative_prompt == "blurry"
    assert (config.seed, config.num_inference_steps, config.guidance_scale) == (1234, STEPS, 5.5)
    assert (config.scheduler, config.width, config.height) == ("euler", 64, 64)
    assert config.pose is not None and config.controlnet_conditioning_scale == 0.75
    assert kwargs["cancel"] is not None and kwargs["progress"] is not None
    # What the app shows: one picture in the gallery, the progress at the last step, previews.
    assert len(app.gallery) == 1 and app.gallery.items[0].recipe.seed == 1234
    assert app.progress.last.step == STEPS and app.progress.previews == STEPS
    assert "seed 1234" in app.status.text
    assert not app.generate_button.disabled and app.cancel_button.disabled


def test_unlocked_seed_is_new_each_time_and_shown(app):
    app.prompt.value = "a robot"
    app.lock_seed.value = False
    seeds = []
    for _ in range(2):
        run(app, app.generate_button)
        seeds.append(app.received[-1][0].seed)
        assert app.seed.value == seeds[-1]  # the control shows the seed that was used
    assert seeds[0] != seeds[1]
    app.lock_seed.value = True
    run(app, app.generate_button)
    assert app.received[-1][0].seed == seeds[1]


def test_restore_puts_the_recipe_back_and_remakes_the_picture(app):
    app.prompt.value = "a red fox"
    app.seed.value, app.lock_seed.value = 7, True
    app.select_poses(["t_pose"])
    run(app, app.generate_button)
    first = app.gallery.items[0]

    app.prompt.value = "a blue whale"
    app.seed.value = 99
    app.select_poses([])
    app.scheduler.value = "ddim"
    run(app, app.generate_button)
    assert len(app.gallery) == 2

    first.restore_button.click()
    assert app.prompt.value == "a red fox" and app.seed.value == 7 and app.lock_seed.value
    assert app.pose_order == ["t_pose"] and app.scheduler.value == first.recipe.scheduler
    run(app, app.generate_button)
    remade = app.gallery.items[-1]
    assert app.received[-1][0] == first.recipe
    assert np.array_equal(np.asarray(remade.image), np.asarray(first.image))


def test_restore_from_a_bare_recipe(app, tiny_studio):
    from charstudio.pose import load_pose

    recipe = tiny_studio.make_config("a castle", style="none", seed=5, num_inference_steps=2, width=64, height=64,
                                     pose=load_pose("sitting"), scheduler="lms", guidance_scale=3.0)
    item = app.gallery.add(__import__("PIL.Image").Image.new("RGB", (64, 64)), recipe, "from disk")
    item.restore_button.click()
    assert (app.card.value, app.prompt.value, app.style.value) == ("", "a castle", "none")
    assert (app.seed.value, app.steps.value, app.scheduler.value, app.guidance.value) == (5, 2, "lms", 3.0)
    assert app.pose_order == ["sitting"]
    assert app.make_config() == recipe.replace(model=tiny_studio.model_id)


def test_restore_from_a_two_person_recipe(app, tiny_studio):
    """A PNG drawn on a two-person pose (the pose editor's, notebook 05's) restores both people."""
    from charstudio.pose.compose import PoseGroup, side_by_side

    group = side_by_side("standing_front", "waving", width=128, height=64)
    recipe = tiny_studio.make_config("two friends", style="none", seed=5, num_inference_steps=2, width=128,
                                     height=64, pose=group)
    item = app.gallery.add(__import__("PIL.Image").Image.new("RGB", (128, 64)), recipe, "from disk")
    item.restore_button.click()
    restored = app.poses.get(app.pose_order[0])
    assert isinstance(restored, PoseGroup) and len(restored.people) == 2
    assert app.make_config().pose == recipe.pose


def test_running_disables_buttons_ignores_a_second_click_and_cancel_stops_at_the_next_step(app, monkeypatch):
    app.prompt.value = "a dragon"
    app.steps.value = 5
    seen = {}
    real_report = app._report

    def report(p):
        real_report(p)
        if p.step == 2:
            seen["disabled"] = (app.generate_button.disabled, app.sheet_button.disabled, app.save_button.disabled)
            seen["cancel_enabled"] = not app.cancel_button.disabled
            seen["second_click"] = app.generate()
            app.cancel_button.click()

    monkeypatch.setattr(app, "_report", report)
    run(app, app.generate_button)
    assert seen == {"disabled": (True, True, True), "cancel_enabled": True, "second_click": False}
    assert app.runner.jobs_started == 1 and len(app.received) == 1
    assert app.progress.last.step == 2  # step 3's callback raised before reporting
    assert "cancelled" in app.status.text and app.status.level == "warn"
    assert len(app.gallery) == 0
    assert not app.generate_button.disabled and app.cancel_button.disabled
    # The app works again after a cancel.
    monkeypatch.setattr(app, "_report", real_report)
    run(app, app.generate_button)
    assert len(app.gallery) == 1


def test_errors_show_as_one_readable_line(app):
    app.card.value = ""
    app.prompt.value = "   "
    run(app, app.generate_button)
    assert app.status.level == "error"
    assert "prompt" in app.status.text and "\n" not in app.status.text and "Traceback" not in app.status.text
    assert not app.generate_button.disabled and len(app.gallery) == 0

    app.prompt.value = "ok"
    app.model.value = "no-such-model-anywhere"
    run(app, app.generate_button)
    assert app.status.level == "error" and "no-such-model-anywhere" in app.status.text


def test_pose_upload_json_and_bad_file(app, tiny_studio):
    from charstudio.pose import load_pose

    data = json.dumps(load_pose("jumping").to_dict()).encode()
    app.load_pose_file("my_jump.json", data)
    assert app.pose_order == ["my_jump"] and "my_jump" in app.pose_buttons
    app.prompt.value = "a frog"
    run(app, app.generate_button)
    assert app.received[-1][0].pose == load_pose("jumping").fit(64, 64).to_dict()

    app.load_pose_file("broken.json", b"{not json")
    assert app.status.level == "error" and "broken.json" in app.status.text


def test_style_mix_calls_mix_styles_with_the_slider_weights(app, monkeypatch):
    import charstudio.interpolation as interp

    calls = []
    real = interp.mix_styles

    def spy(studio, subject, styles, **settings):
        calls.append((subject, dict(styles), settings))
        return real(studio, subject, styles, **settings)

    monkeypatch.setattr(interp, "mix_styles", spy)
    app.prompt.value = "a wizard"
    app.style.value, app.style_b.value, app.style_mix.value = "watercolor", "sketch", 0.25
    app.seed.value, app.lock_seed.value = 11, True
    run(app, app.generate_button)
    assert app.status.level == "ok", app.status.text
    assert calls[0][:2] == ("a wizard", {"watercolor": 0.75, "sketch": 0.25})
    assert calls[0][2]["seed"] == 11
    assert len(app.gallery) == 1 and "(mix)" in app.gallery.items[0].label
    # the hooked studio passed the app's cancel token into every run
    assert all(kw.get("cancel") is not None for _, kw in app.received)


def test_a_saved_style_mix_reruns_as_the_same_mix(app, tiny_studio):
    """The PNG of a mixed picture carries the mix: re-running it gives the same pixels, not the
    heaviest style alone."""
    from charstudio.result import Result

    app.prompt.value = "a wizard"
    app.style.value, app.style_b.value, app.style_mix.value = "watercolor", "sketch", 0.4
    app.seed.value, app.lock_seed.value = 11, True
    run(app, app.generate_button)
    assert app.status.level == "ok", app.status.text
    (path,) = app.save()
    recipe = Result.from_png(path).recipe
    assert [(p["style"], round(p["weight"], 6)) for p in recipe.style_mix] == [("watercolor", 0.6), ("sketch", 0.4)]
    shown = np.asarray(app.gallery.items[-1].image.convert("RGB"))
    again = np.asarray(tiny_studio.run(recipe).images[0].convert("RGB"))
    np.testing.assert_array_equal(again, shown)
    unmixed = np.asarray(tiny_studio.run(recipe.replace(style_mix=[])).images[0].convert("RGB"))
    assert not np.array_equal(unmixed, shown)
    # Restoring the picture and generating again makes the same mix.
    app.restore(app.gallery.items[-1])
    run(app, app.generate_button)
    np.testing.assert_array_equal(np.asarray(app.gallery.items[-1].image.convert("RGB")), shown)


def test_save_writes_a_png_with_its_recipe(app, tmp_path):
    from charstudio.result import Result

    assert app.save() == [] and app.status.level == "warn"
    app.prompt.value = "a lighthouse"
    run(app, app.generate_button)
    paths = app.save()
    assert len(paths) == 1 and paths[0].parent == tmp_path / "out"
    assert Result.from_png(paths[0]).recipe == app.gallery.items[0].recipe
    assert str(paths[0]) in app.status.text


def test_sheet_draws_the_card_in_every_selected_pose(app, tiny_studio, monkeypatch):
    calls = []
    real = tiny_studio.sheet

    def spy(subject, poses, **kwargs):
        calls.append((subject, poses, kwargs))
        return real(subject, poses, **kwargs)

    monkeypatch.setattr(tiny_studio, "sheet", spy)
    app.sheet_button.click()
    assert app.wait(60) and app.status.level == "error" and "pose" in app.status.text  # none selected

    app.card.value = "kiro"
    app.seed.value, app.lock_seed.value = 21, True
    app.select_poses(["running", "sitting"])
    app.consistency.value = 0.5
    run(app, app.sheet_button)
    assert app.status.level == "ok", app.status.text
    subject, poses, kwargs = calls[-1]
    assert subject == "kiro" and len(poses) == 2
    assert kwargs["seed"] == 21 and kwargs["reference_strength"] == 0.5 and kwargs["cancel"] is not None
    assert len(app.gallery) == 2
    assert [it.controls["poses"] for it in app.gallery.items] == [["running"], ["sitting"]]
    assert all(it.recipe.character == "kiro" and it.recipe.pose is not None for it in app.gallery.items)
    assert app.progress.last.images == 2 and app.progress.last.image == 2


def _fake_lora(folder, name="testlora"):
    """A small random LoRA for the tiny UNet, saved as training would save it."""
    import torch
    from peft import LoraConfig

    from charstudio.lora import save_lora
    from charstudio.models.tiny import build_tiny_components

    unet = build_tiny_components()["unet"]
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:  # B starts at zero; a random B makes the LoRA change the picture
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    save_lora(unet, None, folder / name, name)
    return name


def test_lora_picker_switches_the_lora_and_recipes_record_it(fresh_studio, tmp_path):
    lora_dir = tmp_path / "lora"
    app = ExploreApp(fresh_studio, steps=2, size=64, lora_dir=str(lora_dir))
    assert [v for _, v in app.lora.options] == [""]
    name = _fake_lora(lora_dir)
    app.lora_refresh.click()
    assert [v for _, v in app.lora.options] == ["", name]

    app.prompt.value = "a knight"
    app.seed.value, app.lock_seed.value = 3, True
    run(app, app.generate_button)
    base = app.gallery.items[-1]
    assert base.recipe.loras == {}
    app.lora.value, app.lora_weight.value = name, 0.8
    run(app, app.generate_button)
    with_lora = app.gallery.items[-1]
    assert app.status.level == "ok", app.status.text
    assert with_lora.recipe.loras == {name: 0.8}
    assert not np.array_equal(np.asarray(with_lora.image), np.asarray(base.image))
    # Back to none: the LoRA goes off and the first picture comes back exactly.
    app.lora.value = ""
    run(app, app.generate_button)
    assert app.gallery.items[-1].recipe.loras == {}
    assert np.array_equal(np.asarray(app.gallery.items[-1].image), np.asarray(base.image))
    # Restoring the LoRA picture puts the LoRA back into the controls.
    with_lora.restore_button.click()
    assert (app.lora.value, app.lora_weight.value) == (name, 0.8)


def test_open_png_restores_its_recipe(app, tmp_path):
    app.prompt.value = "a tower"
    app.seed.value, app.lock_seed.value = 77, True
    app.scheduler.value = "unipc"
    run(app, app.generate_button)
    path = app.save()[0]
    app.prompt.value, app.seed.value, app.scheduler.value = "something else", 1, "ddim"
    item = app.open_png(path.name, path.read_bytes())
    assert item is not None and len(app.gallery) == 2 and item.recipe == app.gallery.items[0].recipe
    assert (app.prompt.value, app.seed.value, app.scheduler.value) == ("a tower", 77, "unipc")
    # Restored as the final prompt with style "none": the same recipe apart from that label.
    assert app.make_config().replace(style=item.recipe.style) == item.recipe

    assert app.open_png("junk.png", b"not a png") is None
    assert app.status.level == "error" and "junk.png" in app.status.text


def test_a_click_queued_behind_another_run_uses_the_settings_of_the_click(app, tiny_studio):
    """Generate and Sheet wait for the studio (training, another app); edits meanwhile don't leak in."""
    import threading

    from charstudio.ui.common import CancelToken, exclusive

    release, holding = threading.Event(), threading.Event()

    def other_app_run():  # as the Train app holds the studio while it trains
        with exclusive(tiny_studio, CancelToken()):
            holding.set()
            release.wait(60)

    for button in (app.generate_button, app.sheet_button):
        blocker = threading.Thread(target=other_app_run)
        blocker.start()
        assert holding.wait(30)
        app.prompt.value, app.seed.value, app.lock_seed.value, app.steps.value = "a red cat", 11, True, STEPS
        app.select_poses(["waving"])
        before = len(app.gallery)
        button.click()
        # Edited while the click waits for the studio.
        app.prompt.value, app.seed.value, app.steps.value = "a blue dog", 99, STEPS + 1
        app.select_poses(["walking"])
        release.set()
        blocker.join()
        assert app.wait(120)
        holding.clear(), release.clear()
        assert app.status.level == "ok", app.status.text
        item = app.gallery.items[before]
        config = app.received[-1][0]
        assert "red cat" in config.prompt and config.seed == 11 and config.num_inference_steps == STEPS
        assert item.recipe.prompt == config.prompt and item.recipe.seed == 11
        assert item.controls["prompt"] == "a red cat" and item.controls["seed"] == 11
        assert item.controls["poses"] == ["waving"] and item.controls["steps"] == STEPS


def test_the_apps_offer_sdxl_models_and_sizes_and_draw_on_tiny_sdxl(tiny_sdxl_studio, tmp_path):
    xl = tiny_sdxl_studio
    pytest.importorskip("ipywidgets")
    from charstudio.ui.explore import ExploreApp

    app = ExploreApp(xl, steps=1, output_dir=str(tmp_path / "out"))
    assert {"sdxl", "tiny-sdxl", "sd15", "mini"} <= set(app.model.options)
    sizes = {v for _, v in app.width.options}
    assert {832, 1216, 896, 1152, 1344, 768} <= sizes  # SDXL's training buckets
    app.prompt.value = "a girl with long red hair, blue dress"
    app.width.value, app.height.value = 832, 1216
    cfg = app.make_config()
    assert (cfg.width, cfg.height) == (832, 1216)
    app.width.value = app.height.value = 64
    app.generate_button.click()
    assert app.wait(120) and app.status.level == "ok", app.status.text
    assert app.gallery.items[-1].recipe.model == "tiny-sdxl"
