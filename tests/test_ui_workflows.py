"""The workflows app (notebook 05): each workflow runs from the controls and shows before/after."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ipywidgets")


@pytest.fixture(scope="module")
def app(mini_studio):
    from charstudio.ui import WorkflowsApp

    return WorkflowsApp(mini_studio, steps=4)


def run(app, workflow: str) -> None:
    app.workflow.value = workflow
    app.seed.value = 3
    app.run_button.click()
    assert app.wait(600)
    assert "done" in app.status.text, app.status.text


def test_inpaint_from_the_controls_changes_only_the_masked_region(app):
    app.design.source.value = "card:rin"
    app.region.value, app.new_prompt.value, app.strength.value = "hair", "a girl with blue hair", 0.8
    run(app, "inpaint")
    assert app.options_box.children == (app.options["inpaint"],)
    recipe = app.result.recipe
    assert recipe.inpaint["mask"]["region"] == "hair" and recipe.inpaint["strength"] == 0.8
    before, after = (np.asarray(im.convert("RGB"), dtype=np.int16) for im in (app.before, app.result.image))
    # The picture is watermarked as a whole (at most 8 levels a channel, #39); the redraw is the hair box.
    changed = np.abs(before - after).max(-1) > 8
    assert changed.any() and changed.mean() < 0.5  # the hair box, not the whole picture


def test_regions_and_turnaround_from_the_controls(app):
    app.design.source.value = "card:kai"
    run(app, "regions")
    assert [r["box"] for r in app.result.recipe.regions] == ["left", "right"]
    assert app.before.size == app.result.image.size == (128, 64)
    run(app, "turnaround")
    assert app.result.labels == ["front", "three-quarter", "side", "back"]


def test_bad_input_shows_one_line_and_keeps_the_app_usable(app):
    app.design.source.value = "prompt"
    app.design.prompt.value = "   "
    app.workflow.value = "detail"
    app.run_button.click()
    assert app.wait(60)
    assert "prompt" in app.status.text and "\n" not in app.status.text.strip()
    assert not app.run_button.disabled
