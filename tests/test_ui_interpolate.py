"""InterpolateApp without a browser: A->B frames, style-mix sliders, pose animation, cancel."""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")

from charstudio.ui.common import Gallery, blank_png  # noqa: E402
from charstudio.ui.interpolate import InterpolateApp  # noqa: E402


@pytest.fixture
def app(tiny_studio, run_spy, tmp_path):
    received = run_spy
    gallery = Gallery()
    a = InterpolateApp(tiny_studio, gallery=gallery, steps=2, frames=3, output_dir=str(tmp_path / "out"))
    a.received = received
    a.size.value = 64
    yield a
    a.wait()


def run(app, button):
    button.click()
    assert app.wait(180), "the run did not finish"


def test_interpolate_two_cards_shows_frames_gif_and_smoothness(app):
    app.design_a.source.value = "card:aiko"
    app.design_b.source.value = "card:bram"
    app.seed_a.value, app.seed_b.value = 1, 2
    app.frames.value = 4
    app.method.value = "lerp"
    run(app, app.interpolate_button)
    assert app.status.level == "ok", app.status.text
    name, args = app.calls[-1]
    assert name == "interpolate" and (args["frames"], args["method"], args["uniform"]) == (4, "lerp", False)
    assert (args["a"].character, args["a"].seed, args["b"].character, args["b"].seed) == ("aiko", 1, "bram", 2)
    assert len(app.received) == 4 and all(kw["cancel"] is not None for _, kw in app.received)
    view = app.morph_view
    assert len(view.frames) == 4 and view.slider.max == 4
    first = view.image.value
    view.slider.value = 4
    assert view.image.value != first and "t = 1.000" in view.caption.value
    assert view.gif.format == "gif" and view.gif.value[:3] == b"GIF"
    assert "evenness" in app.smoothness.value and app.smoothness_plot.value != blank_png()


def test_a_gallery_recipe_can_be_an_end(app, tiny_studio, tmp_path):
    from PIL import Image

    recipe = tiny_studio.make_config("a cat", seed=5, num_inference_steps=2, width=64, height=64, scheduler="ddim")
    item = app.design_a.gallery.add(Image.new("RGB", (64, 64)), recipe, "cat")
    options = [v for _, v in app.design_a.source.options]
    assert f"recipe:{item.number}" in options  # the picker learnt about the new picture
    app.design_a.source.value = f"recipe:{item.number}"
    app.design_b.source.value = "prompt"
    app.design_b.prompt.value = "a dog"
    app.frames.value = 2
    run(app, app.interpolate_button)
    assert app.status.level == "ok", app.status.text
    assert app.calls[-1][1]["a"] == recipe and app.calls[-1][1]["b"].prompt == "a dog"
    # Save: frames with their recipes, the index and the GIF, in a new folder each time.
    paths = app.save()
    folder = tmp_path / "out" / "interpolation-001"
    assert sorted(p.name for p in folder.iterdir()) == ["animation.gif", "frame_000.png", "frame_001.png",
                                                        "frames.json"]
    assert all(p.parent == folder and p.is_file() for p in paths) and str(folder) in app.status.text
    assert app.save()[0].parent.name == "interpolation-002"


def test_style_mix_uses_the_slider_weights(app):
    for s in app.style_weights.values():
        s.value = 0.0
    assert app.mix_button.click() is None and app.wait(60)
    assert app.status.level == "error" and "slider" in app.status.text
    app.style_weights["watercolor"].value = 0.3
    app.style_weights["sketch"].value = 0.1
    app.mix_design.source.value = "card:pip"
    app.mix_seed.value = 9
    run(app, app.mix_button)
    assert app.status.level == "ok", app.status.text
    assert app.calls[-1][1]["styles"] == {"watercolor": 0.3, "sketch": 0.1}
    assert app.mix.weights == pytest.approx({"watercolor": 0.75, "sketch": 0.25})
    assert app.mix.recipe.seed == 9 and app.mix_image.value != blank_png()


def test_pose_animation_and_cancel(app, monkeypatch):
    app.anim_design.source.value = "card:mira"
    app.pose_a.value, app.pose_b.value = "standing_front", "jumping"
    app.anim_frames.value = 3
    app.anim_seed.value = 4
    run(app, app.animate_button)
    assert app.status.level == "ok", app.status.text
    res = app.animation
    assert len(res.images) == 3 and {r.seed for r in res.recipes} == {4}
    assert res.recipes[0].pose != res.recipes[-1].pose
    assert app.anim_view.gif.value[:3] == b"GIF"

    # The frames are drawn in one UNet batch: the bar counts them together.
    seen = []
    real_fraction = app.progress.fraction

    def fraction(done, text):
        real_fraction(done, text)
        seen.append((round(done, 3), text))
        if text.endswith("step 1/2"):
            app.cancel_button.click()

    monkeypatch.setattr(app.progress, "fraction", fraction)
    run(app, app.animate_button)
    assert seen[0] == (0.5, "render 1-3/3, step 1/2")  # 3 frames x 2 steps, 3 of 6 done
    assert "cancelled" in app.status.text  # Cancel stops the batch at the next step
    assert app.animation is res and not app.animate_button.disabled


def test_gallery_numbers_stay_with_their_pictures_when_old_ones_drop_out():
    """After max_items, numbers do not repeat, and a picker keeps the picture it shows (or says it is gone)."""
    from PIL import Image

    from charstudio.config import GenerationConfig
    from charstudio.errors import ConfigError
    from charstudio.ui.common import DesignPicker, Gallery

    gallery = Gallery(max_items=3)
    picker = DesignPicker(gallery)
    recipes = [GenerationConfig(prompt=f"picture {i}", seed=i) for i in range(1, 8)]
    for r in recipes[:4]:
        gallery.add(Image.new("RGB", (8, 8)), r, r.prompt)
    assert [it.restore_button.description for it in gallery.items] == ["#2 restore", "#3 restore", "#4 restore"]
    picker.source.value = "recipe:3"
    assert picker.value() == recipes[2] and "#3" in picker.source.label
    gallery.add(Image.new("RGB", (8, 8)), recipes[4], recipes[4].prompt)  # #2 drops out
    assert [it.number for it in gallery.items] == [3, 4, 5]
    assert picker.source.value == "recipe:3" and picker.value() == recipes[2]
    for r in recipes[5:]:  # #3 drops out too
        gallery.add(Image.new("RGB", (8, 8)), r, r.prompt)
    assert len({it.restore_button.description for it in gallery.items}) == 3
    assert picker.source.value == "prompt"  # the picker no longer offers a picture that is gone
    with pytest.raises(ConfigError, match="gallery #3"):
        gallery.recipe(3)
