"""The Storyboard app (notebook 06), headless: Play draws the script in the box and shows the page; one
panel's words are edited and re-lettered (nothing drawn) or the panel re-drawn (one picture, the next
seed); Cancel stops between two pictures; a bad seed is one status line."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ipywidgets")

SCRIPT = """title: Test
seed: 40
setting: grey background
panels:
  - characters: ["@rin"]
    caption: Rin waits.
    line: Kai!
  - characters: ["@rin", "@kai"]
    pose: [standing_front, waving]
    caption: Together.
"""


@pytest.fixture
def app(tiny_studio, monkeypatch, tmp_path):
    from charstudio.ui.storyboard import StoryboardApp

    monkeypatch.setattr(tiny_studio, "default_size", 64)
    calls = []
    real = tiny_studio.run

    def run(config, **kwargs):
        calls.append(config.seed)
        return real(config, **kwargs)

    monkeypatch.setattr(tiny_studio, "run", run)
    app = StoryboardApp(tiny_studio, steps=2, script=SCRIPT, out=str(tmp_path / "board"))
    app.identity.scorer = False  # tiny draws noise: no identity scores, no re-draws
    app.identity.mode.value = "off"
    app.calls = calls
    return app


def test_play_draws_the_script_and_shows_the_page_and_its_panels(app, tmp_path):
    from charstudio.ui.common import blank_png

    assert "Rin waits." in app.script.value and app.panel.disabled
    app.play_button.click()
    assert app.wait(600)
    assert app.status.level == "ok" and "2 panels drawn (2 pictures)" in app.status.text, app.status.text
    assert app.calls == [7, 11, 40, 56]  # the anchors at the cards' seeds, then panel i at 40 + 16 i
    assert app.page_image.value != blank_png() and (tmp_path / "board" / "page.png").is_file()
    assert [v for _, v in app.panel.options] == [1, 2] and not app.panel.disabled
    assert app.caption.value == "Rin waits." and app.line.value == "Kai!"
    assert app.cancel_button.disabled  # idle again


def test_edit_a_line_then_redraw_one_panel(app, tmp_path):
    app.play_button.click()
    assert app.wait(600)
    drawn = len(app.calls)
    app.panel.value = 2
    assert app.caption.value == "Together." and app.line.value == ""
    app.line.value = "Hello, Kai."
    app.reletter_button.click()
    assert app.wait(600)
    assert "panel 2 done" in app.status.text and len(app.calls) == drawn  # words only: nothing drawn
    saved = json.loads((tmp_path / "board" / "storyboard.json").read_text())
    assert saved["script"]["panels"][1]["line"] == "Hello, Kai."
    app.redraw_button.click()
    assert app.wait(600)
    assert app.calls[drawn:] == [57] and app.board.panels[1].recipe.seed == 57  # the seed after its last try
    assert app.panel.value == 2 and app.line.value == "Hello, Kai."


def test_cancel_stops_between_pictures_and_a_bad_seed_is_one_line(app, monkeypatch):
    studio = app.source.get(app.model.value)
    real = studio.run

    def run_then_cancel(config, **kwargs):
        res = real(config, **kwargs)
        app.runner.cancel()
        return res

    monkeypatch.setattr(studio, "run", run_then_cancel)
    app.play_button.click()
    assert app.wait(600)
    assert app.status.text == "Play: cancelled" and app.board is None
    app.seed.value = "abc"
    app.play_button.click()
    assert app.wait(600)
    assert app.status.level == "error" and "seed='abc'" in app.status.text
