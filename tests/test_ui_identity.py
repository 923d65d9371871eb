"""Identity in the notebook apps (#36), without a browser: each picture's score under it, the
drifting ones marked, the min-identity control reaching the core, the Train app's identity plot."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from charstudio.identity import Scorer  # noqa: E402
from charstudio.ui.explore import ExploreApp  # noqa: E402
from charstudio.ui.workflows import WorkflowsApp  # noqa: E402


class ScriptedScorer(Scorer):
    """The first pass's pictures get ``first`` (row i for picture i); every later picture (a re-roll)
    gets ``later``: so which views drift is known whatever the tiny model draws."""

    name = "scripted"
    threshold = 0.5  # identity >= 0.5 is the same character

    def __init__(self, first, later=(0.0, 1.0)):
        self.first, self.later, self.calls = [list(r) for r in first], list(later), 0

    def embed(self, images):
        self.calls += 1
        rows = [self.first[i % len(self.first)] if self.calls == 1 else self.later for i in range(len(images))]
        return np.asarray(rows, dtype=np.float32)


def cell_text(cell):
    return cell.children[1].value


def classes(cell):
    return set(cell._dom_classes)


def test_explore_sheet_shows_scores_marks_drift_and_passes_min_identity(tiny_studio):
    app = ExploreApp(tiny_studio, model="tiny", steps=2)
    app.select_poses(["standing_front", "waving", "sitting"])
    app.prompt.value = "a knight"
    # picture 1 alike to the anchor (identity 1), picture 2 not (identity 0), its re-roll neither
    app.identity.scorer = ScriptedScorer([(1, 0), (1, 0), (0, 1)])
    app.identity.mode.value = "auto"
    assert app.identity.value.disabled  # the number box is for "number" only
    app.identity.max_tries.value = 2
    app.sheet_button.click()
    assert app.wait(300)
    result = app.last_result
    assert result.identity is not None and result.identity.scorer == "scripted"

    # The min-identity control reached the core: the sheet's settings record it, resolved.
    recorded = result.settings["identity"]
    assert recorded["asked"] == "auto" and recorded["min_identity"] == pytest.approx(0.5)
    assert recorded["max_tries"] == 2 and len(recorded["tries"][2]) == 2  # the drifting view was re-rolled once

    # Each picture's score under it is the report's; the scorer is named once, in the header.
    strip = app.identity_strip
    assert strip.widget.layout.display != "none"
    assert [p["score"] for p in strip.pictures] == result.identity.scores
    assert [p["label"] for p in strip.pictures] == result.labels
    cells = strip.row.children
    assert len(cells) == 3
    assert "scripted" in strip.header.value and all("scripted" not in cell_text(c) for c in cells)
    assert f"{result.identity.scores[1]:.3f}" in cell_text(cells[1])

    # Below the bar: marked (red border, class, "drifting: 0.00 < 0.50"); above it: not.
    assert "charstudio-drifting" in classes(cells[2]) and "d62728" in cells[2].layout.border
    assert "drifting: 0.00 &lt; 0.50" in cell_text(cells[2])
    for ok in cells[:2]:
        assert "charstudio-drifting" not in classes(ok) and "drifting" not in cell_text(ok)
        assert "d62728" not in ok.layout.border

    # The one line naming the views that never reached it is in the status, as a warning.
    assert result.never_reached == [result.labels[2]]
    assert result.identity_note in app.status.text and app.status.level == "warn"

    # A plain Generate clears the sheet's scores: they do not belong to its picture.
    app.generate_button.click()
    assert app.wait(300)
    assert app.identity_strip.widget.layout.display == "none" and not app.identity_strip.row.children


def test_explore_min_identity_off_by_default_and_a_number_is_passed(tiny_studio):
    app = ExploreApp(tiny_studio, model="tiny", steps=2)
    assert app.identity.kwargs() == {"min_identity": None, "max_tries": 4}
    app.identity.mode.value = "number"
    assert not app.identity.value.disabled
    app.identity.value.value = 0.93
    names = ["standing_front", "waving"]
    args = app.sheet_args(None, names, "")
    assert args["min_identity"] == pytest.approx(0.93) and args["max_tries"] == 4


def test_workflows_expression_sheet_scores_marks_and_number_bar(tiny_studio):
    app = WorkflowsApp(tiny_studio, model="tiny", steps=2, prompt="a knight")
    app.workflow.value = "expressions"
    assert app.identity.widget in app.options_box.children[0].children
    app.expressions.value = "neutral, smiling, angry"
    app.identity.scorer = ScriptedScorer([(1, 0), (0.6, 0.8), (1, 0)])  # smiling: identity 0.6
    app.identity.mode.value = "number"
    app.identity.value.value = 0.7  # above the scorer's own 0.5: smiling drifts under this bar
    app.identity.max_tries.value = 1
    app.run_button.click()
    assert app.wait(300)
    sheet = app.result
    assert sheet.settings["identity"]["min_identity"] == pytest.approx(0.7)
    assert sheet.settings["identity"]["max_tries"] == 1
    strip = app.identity_strip
    assert [p["score"] for p in strip.pictures] == sheet.identity.scores
    assert sheet.identity.scores[1] == pytest.approx(0.6)
    cells = strip.row.children
    assert "charstudio-drifting" in classes(cells[1]) and "drifting: 0.60 &lt; 0.70" in cell_text(cells[1])
    assert "charstudio-drifting" not in classes(cells[2]) and "drifting" not in cell_text(cells[2])
    assert "scripted" in app.status.text


def test_workflows_turnaround_gets_min_identity(tiny_studio):
    app = WorkflowsApp(tiny_studio, model="tiny", steps=2, prompt="a knight")
    app.workflow.value = "turnaround"
    assert app.identity.widget in app.options_box.children[0].children
    app.identity.scorer = False  # no scores: the bar is still recorded as asked, the strip stays hidden
    app.identity.mode.value = "number"
    app.identity.value.value = 0.81
    app.identity.max_tries.value = 3
    app.run_button.click()
    assert app.wait(300)
    recorded = app.result.settings["identity"]
    assert recorded["asked"] == pytest.approx(0.81) and recorded["max_tries"] == 3
    assert app.identity_strip.widget.layout.display == "none"


def test_train_app_plots_identity_points_from_records(fresh_studio, tmp_path, monkeypatch):
    import charstudio.ui.train as train_ui
    from charstudio.training import TrainingStep

    drawn = []
    real = train_ui.identity_figure
    monkeypatch.setattr(train_ui, "identity_figure", lambda points: drawn.append(list(points)) or real(points))
    app = train_ui.TrainApp(fresh_studio, model="tiny", data_dir="", steps=4, output_dir=str(tmp_path / "lora"))
    assert app.identity_plot.layout.display == "none"
    points = [{"step": 2, "trained": 0.61, "base": 0.55, "change": 0.06, "scorer": "mini", "threshold": 0.8166},
              {"step": 4, "trained": 0.74, "base": 0.55, "change": 0.19, "scorer": "mini", "threshold": 0.8166}]
    for step in range(1, 5):
        app._on_step(TrainingStep(step=step, total_steps=4, loss=0.1, lr=1e-4, elapsed=0.0, epoch=0,
                                  identity=points[step // 2 - 1] if step % 2 == 0 else None))
    assert app.identity_points == points
    assert drawn[-1] == points and len(drawn) == 2  # redrawn as each record arrives
    assert app.identity_plot.layout.display == "" and bytes(app.identity_plot.value).startswith(b"\x89PNG")
    assert bytes(app.identity_plot.value) != real(points[:1])  # both points are on it

    # A second Start clears it like the loss curve (this one fails at once: no dataset).
    app.start()
    assert app.wait(60)
    assert app.identity_points == [] and app.identity_plot.layout.display == "none"



def test_train_app_identity_plot_from_a_real_run(fresh_studio, tmp_path):
    """A short real run: the plot's points are the validation records' identity, nothing else."""
    from PIL import Image

    from charstudio.ui.train import TrainApp

    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(np.random.RandomState(i).randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / f"{i}.png")
    app = TrainApp(fresh_studio, model="tiny", data_dir=str(data), steps=2, output_dir=str(tmp_path / "lora"))
    app.validation_steps.value, app.checkpointing_steps.value = 1, 2
    app.validation_inference_steps.value, app.rank.value, app.resolution.value = 2, 4, 64
    app.start()
    assert app.wait(300) and app.status.level == "ok", app.status.text
    measured = [r.identity for r in app.records if r.identity]
    assert measured and app.identity_points == measured
    assert [p["step"] for p in app.identity_points] == [1, 2] and app.identity_plot.layout.display == ""
