"""ProcessApp without a browser: trace a run, step through it, pick tokens, compare two samplers."""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")

from charstudio.ui.common import blank_png  # noqa: E402
from charstudio.ui.process import ProcessApp  # noqa: E402


@pytest.fixture
def app(tiny_studio, monkeypatch):
    calls = []
    real = tiny_studio.trace

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny_studio, "trace", spy)
    a = ProcessApp(tiny_studio, steps=4, prompt="a red knight")
    a.calls = calls
    a.size.value = 64
    yield a
    a.wait()


def run(app, button):
    button.click()
    assert app.wait(120), "the run did not finish"


def test_trace_then_step_through_x_t_and_x0(app):
    app.seed.value = 3
    app.scheduler.value = "euler"
    run(app, app.trace_button)
    assert app.status.level == "ok", app.status.text
    cfg = app.calls[-1]["config"]
    assert (cfg.prompt, cfg.seed, cfg.scheduler, cfg.num_inference_steps, cfg.width) == ("a red knight", 3, "euler", 4, 64)
    assert app.calls[-1]["attention"] is True
    assert len(app.trace.records) == 4 and app.step.max == 4 and not app.step.disabled
    last = (app.xt_image.value, app.x0_image.value)
    app.step.value = 1
    assert "step 1 of 4" in app.step_info.value
    assert (app.xt_image.value, app.x0_image.value) != last  # the slider shows another step
    assert app.xt_image.value != app.x0_image.value
    assert app.schedule_image.value != blank_png()
    # token picker: one entry per prompt token; each token gets its own heat map
    assert [j for _, j in app.token.options] == list(range(len(app.trace.tokens)))
    first = app.heatmap.value
    app.token.value = app.token.options[4][1]
    assert app.heatmap.value not in (first, blank_png())
    # the approx decoder shows the same step differently (and costs no VAE call)
    vae_view = app.x0_image.value
    app.decoder.value = "approx"
    assert app.x0_image.value != vae_view


def test_compare_two_schedulers_side_by_side(app):
    app.scheduler_a.value, app.steps_a.value = "ddim", 3
    app.scheduler_b.value, app.steps_b.value = "euler-a", 5
    run(app, app.compare_button)
    assert app.status.level == "ok", app.status.text
    got = [(c["config"].scheduler, c["config"].num_inference_steps) for c in app.calls]
    assert got == [("ddim", 3), ("euler-a", 5)]
    assert [len(t.records) for t, _ in app.comparison] == [3, 5]
    assert "ddim" in app.compare_labels[0].value and "euler-a" in app.compare_labels[1].value
    assert all(img.value != blank_png() for img in app.compare_images + app.compare_strips)


def test_cancel_stops_a_trace_and_errors_read_as_one_line(app, monkeypatch):
    app.steps.value = 6
    real = app._report

    def report(p):
        real(p)
        if p.step == 2:
            app.cancel_button.click()

    monkeypatch.setattr(app, "_report", report)
    run(app, app.trace_button)
    assert "cancelled" in app.status.text and app.trace is None
    assert app.progress.last.step == 2 and not app.trace_button.disabled

    app.design.prompt.value = ""
    run(app, app.trace_button)
    assert app.status.level == "error" and "prompt" in app.status.text and "\n" not in app.status.text


def test_apps_start_in_words_the_model_knows():
    """On mini the apps' starting prompt and cards use only mini's vocabulary (the SD 1.5 ones,
    a knight in silver armour, aiko and bram, are mostly words mini never saw)."""
    import re

    from charstudio.character import load_character
    from charstudio.models.presets import preset_examples
    from charstudio.ui.interpolate import InterpolateApp
    from charstudio.mini.world import vocabulary

    known = set(vocabulary())
    process, interpolate = ProcessApp(model="mini"), InterpolateApp(model="mini")  # nothing loads until used
    assert process.design.prompt.value == preset_examples("mini")[1]
    assert (interpolate.design_a.value(), interpolate.design_b.value()) == ("rin", "kai")
    texts = [process.design.prompt.value] + [load_character(c).subject for c in ("rin", "kai")]
    for text in texts:
        assert set(re.findall(r"[a-z]+", text.lower())) <= known, text
    # Other models keep the SD 1.5 examples.
    assert preset_examples("sd15") == preset_examples("/models/anime.safetensors") == (("aiko", "bram"),
                                                                                      "a knight in silver armour, portrait")
    assert not set(re.findall(r"[a-z]+", preset_examples("sd15")[1])) <= known
