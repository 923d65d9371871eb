"""The apps' card pickers check the card when it is used: a card deleted after the app listed it
is an error on the status line, never drawn as a prompt of its name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("ipywidgets")

SHIPPED = Path(__file__).resolve().parent.parent / "prompts" / "characters"


@pytest.fixture
def ghost(tmp_path, monkeypatch):
    """A card named 'ghost' (a copy of aiko) in a prompts folder of the test's own; delete the
    returned path to take the card away after an app has listed it."""
    folder = tmp_path / "prompts" / "characters"
    folder.mkdir(parents=True)
    card = folder / "ghost.yaml"
    shutil.copy(SHIPPED / "aiko.yaml", card)
    monkeypatch.setenv("CHARSTUDIO_PROMPTS", str(tmp_path / "prompts"))
    return card


def test_design_picker_refuses_a_card_deleted_after_it_was_listed(ghost):
    from charstudio.errors import ConfigError
    from charstudio.ui.common import DesignPicker

    picker = DesignPicker(card="ghost")
    assert picker.source.value == "card:ghost"
    assert picker.value() == "ghost"  # present: the name, as before
    ghost.unlink()
    with pytest.raises(ConfigError) as err:
        picker.value()
    assert err.value.field == "card" and err.value.value == "ghost"
    assert "no such card" in str(err.value)


def test_explore_app_says_a_deleted_card_is_gone_and_draws_nothing(ghost, tiny_studio, run_spy, tmp_path):
    from charstudio.ui.explore import ExploreApp

    app = ExploreApp(tiny_studio, steps=2, output_dir=str(tmp_path / "out"))
    app.width.value = app.height.value = 64
    app.card.value = "ghost"
    ghost.unlink()
    for button in (app.generate_button, app.sheet_button):
        app.select_poses(["waving"])
        button.click()
        assert app.wait(120)
        assert app.status.level == "error", app.status.text
        assert "card='ghost'" in app.status.text and "no such card" in app.status.text
    assert run_spy == [] and len(app.gallery) == 0


def test_workflows_app_says_a_deleted_card_is_gone_and_draws_nothing(ghost, tiny_studio, run_spy):
    from charstudio.ui import WorkflowsApp

    app = WorkflowsApp(tiny_studio, steps=2)
    app.design.source.value = "card:ghost"
    ghost.unlink()
    app.workflow.value = "hires"
    app.run_button.click()
    assert app.wait(120)
    assert app.status.level == "error", app.status.text
    assert "card='ghost'" in app.status.text and "no such card" in app.status.text
    assert run_spy == []
