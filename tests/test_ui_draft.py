"""Draft mode in the apps (#38), headless: the Draft switch makes the recipes drafts, Finish re-draws
the selected draft at full quality with the same seed and shows both pictures' identity scores."""

from __future__ import annotations

import html

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from charstudio.ui.explore import ExploreApp  # noqa: E402

STEPS = 10  # the full-quality step count; a draft draws fewer (tiny's: feature cache, 8 steps)


@pytest.fixture
def app(tiny_studio, run_spy, one_thread, tmp_path):
    a = ExploreApp(tiny_studio, steps=STEPS, preview_every=4, output_dir=str(tmp_path / "out"))
    a.received = run_spy
    a.width.value = a.height.value = 64
    a.seed.value, a.lock_seed.value = 4321, True
    yield a
    a.wait()


def click(app, button):
    button.click()
    assert app.wait(300), "the run did not finish"


def test_the_switch_makes_the_apps_recipe_a_draft(app, tiny_studio):
    from charstudio.speed.draft import describe
    from charstudio.ui.draft import choice_text

    app.prompt.value = "a knight"
    app.draft.switch.value = True
    click(app, app.generate_button)
    assert app.status.level == "ok", app.status.text
    config = app.received[-1][0]
    assert config.draft is not None and config.num_inference_steps < STEPS
    assert config.draft["full"].get("num_inference_steps", STEPS) == STEPS  # what Finish goes back to
    assert app.gallery.selected.recipe.draft is not None
    assert describe(config) in app.draft.line.value  # the line under the buttons says what drew it
    assert choice_text(tiny_studio) in app.draft.switch.tooltip  # what draft does on this model
    # Its PNG opened again: the controls hold the full-quality settings, with Draft on.
    (path,) = app.save()
    app.steps.value, app.draft.switch.value = 3, False
    app.open_png("draft.png", path.read_bytes())
    assert app.steps.value == STEPS and app.draft.switch.value is True

    app.draft.switch.value = False
    click(app, app.generate_button)
    config = app.received[-1][0]
    assert config.draft is None and config.num_inference_steps == STEPS
    assert "full quality" in app.draft.line.value


def test_finish_adds_the_full_quality_picture_with_the_same_seed_and_both_scores(app):
    from charstudio.identity import get_scorer

    app.card.value = "aiko"  # scored against the card's anchor picture
    app.draft.switch.value = True
    click(app, app.generate_button)
    draft = app.gallery.selected
    assert draft.recipe.draft is not None
    click(app, app.draft.finish_button)
    assert app.status.level == "ok", app.status.text

    assert len(app.gallery) == 2
    finished = app.gallery.selected
    assert finished is app.gallery.items[-1] and finished is not draft
    recipe = finished.recipe
    assert recipe.draft is None and recipe.seed == draft.recipe.seed == 4321
    assert recipe.num_inference_steps == STEPS and recipe.prompt == draft.recipe.prompt
    assert not np.array_equal(np.asarray(finished.image), np.asarray(draft.image))
    # The finished one's restore remakes it at full quality (Draft off); the switch itself stays on.
    assert finished.controls["draft"] is False and app.draft.switch.value is True

    # Both pictures' scores against the card's anchor picture (the card drawn in the anchor pose at
    # full quality: aiko has no reference picture), as the scorer gives them.
    report = app.draft.last
    (row,) = report.rows
    anchor = next(iter(app.draft.anchors.pictures.values()))
    assert report.draft_result.images[0] is draft.image and report.full_result.images[0] is finished.image
    expected = get_scorer(model=app.studio.model_id).report([anchor, draft.image, finished.image], anchor=0).scores
    assert (row.draft, row.full) == pytest.approx((expected[1], expected[2]), abs=1e-4)
    for text in (html.unescape(app.draft.scores.value), app.status.text):
        assert f"draft {row.draft:.3f}" in text and f"finished {row.full:.3f}" in text and "aiko's anchor" in text
    assert len(app.draft.pictures.children) == 2  # the draft and the finished picture, each with its score
    click(app, app.generate_button)  # another picture: the scores were those of the finished pair only
    assert app.draft.scores.value == "" and not app.draft.pictures.children


def test_finish_without_a_draft_says_so(app):
    started = app.runner.jobs_started
    assert app.draft.finish() is False  # nothing in the gallery yet
    assert app.status.level == "warn" and "nothing to finish" in app.status.text
    app.prompt.value = "a knight"
    click(app, app.generate_button)  # Draft off: a full-quality picture
    assert app.draft.finish() is False
    assert app.status.level == "warn" and "already at full quality" in app.status.text
    assert app.runner.jobs_started == started + 1 and len(app.gallery) == 1


def test_workflows_finish_reruns_the_workflow_at_full_quality(tiny_studio, one_thread):
    from charstudio.ui import WorkflowsApp

    app = WorkflowsApp(tiny_studio, steps=STEPS, prompt="a girl with red hair")
    app.design.source.value = "prompt"
    app.workflow.value = "regions"
    app.seed.value = 11
    app.draft.switch.value = True
    assert app.draft.finish() is False and "nothing to finish" in app.status.text
    click(app, app.run_button)
    assert app.status.level == "ok", app.status.text
    drafted = app.result
    assert drafted.recipe.draft is not None and drafted.recipe.num_inference_steps < STEPS
    app.seed.value = 99  # Finish re-draws with the draft's seed, whatever the control says now
    click(app, app.draft.finish_button)
    assert app.status.level == "ok", app.status.text
    recipe = app.result.recipe
    assert recipe.draft is None and recipe.num_inference_steps == STEPS and recipe.seed == 11
    assert [r["box"] for r in recipe.regions] == ["left", "right"]  # the same workflow
    report = app.draft.last  # no card: the draft against its finished picture
    assert report.draft_result is drafted and report.full_result is app.result
    assert report.rows[0].draft is None and 0 < report.rows[0].draft_vs_full <= 1
    assert f"draft {report.rows[0].draft_vs_full:.3f}" in app.status.text
