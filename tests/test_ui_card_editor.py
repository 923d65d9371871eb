"""The Explore app's card editor, headless: set the widgets' values, click Save, read the file."""

from __future__ import annotations

import pytest

from charstudio.cast.card import Character

CARD = """\
# The hero of chapter 2: keep this note.
name: hero
description: a knight  # canonical
traits:
  hair: short white hair
x-art-lead: approve hair changes
wardrobe:
  travel:
    main: a grey cloak  # the cloak is grey
    shoes: boots
expressions:
  grim: frowning
"""


@pytest.fixture
def hero(tmp_path, monkeypatch):
    cards = tmp_path / "prompts" / "characters"
    cards.mkdir(parents=True)
    path = cards / "hero.yaml"
    path.write_text(CARD, encoding="utf-8")
    monkeypatch.setenv("CHARSTUDIO_PROMPTS", str(tmp_path / "prompts"))
    return path


def test_the_editor_shows_a_card_and_save_writes_the_edits_keeping_comments(hero):
    from charstudio.ui.card_editor import CardEditor

    editor = CardEditor()
    editor.load("hero")
    assert editor.description.value == "a knight" and editor.wardrobe.value == "travel: a grey cloak |  | boots"
    assert editor.expressions.value == "grim: frowning" and not editor.save_button.disabled
    editor.description.value = "a wandering knight"
    editor.keep.value = "short white hair, scar"
    editor.palette["hair"].value = "#EEEEEE"
    editor.wardrobe.value = "travel: a grey cloak | | boots\nfestival: a red robe | a hat | | a scarf, glasses"
    editor.expressions.value = "grim: frowning\nsmiling: smiling, happy"
    row = editor.payloads["sdxl"]
    row.lora.value, row.trigger.value, row.weight.value, row.ip_scale.value = "hero_xl", "hrx", 0.8, 0.5
    editor.save_button.click()
    assert editor.status.level == "ok", editor.status.text
    text = hero.read_text(encoding="utf-8")
    for kept in ("# The hero of chapter 2: keep this note.", "# canonical", "# the cloak is grey",
                 "x-art-lead: approve hair changes"):
        assert kept in text, kept
    card = Character.load(hero)
    assert card.description == "a wandering knight" and card.keep == ["short white hair", "scar"]
    assert card.palette == {"hair": "#eeeeee"}
    assert card.wardrobe["festival"] == {"main": "a red robe", "headwear": "a hat", "accessories": ["a scarf", "glasses"]}
    assert card.expressions == {"grim": "frowning", "smiling": "smiling, happy"}
    assert card.families == {"sdxl": {"lora": "hero_xl", "trigger": "hrx", "weight": 0.8, "ip_adapter_scale": 0.5}}
    assert "sd1" not in card.families  # an empty row writes nothing


@pytest.mark.parametrize("widget, value, words", [
    ("palette", "red", "palette.hair"),
    ("wardrobe", "travel: a | b | c | d | e", "at most 4 slots"),
    ("expressions", "just words", "expressions line 1"),
])
def test_a_bad_edit_is_named_in_the_status_and_nothing_is_written(hero, widget, value, words):
    from charstudio.ui.card_editor import CardEditor

    editor = CardEditor()
    editor.load("hero")
    target = editor.palette["hair"] if widget == "palette" else getattr(editor, widget)
    target.value = value
    editor.save_button.click()
    assert editor.status.level == "error" and words in editor.status.text, editor.status.text
    assert hero.read_text(encoding="utf-8") == CARD


def test_explore_shows_the_picked_card_in_its_editor(hero, tiny_studio, tmp_path):
    from charstudio.ui.explore import ExploreApp

    app = ExploreApp(tiny_studio, steps=1, output_dir=str(tmp_path / "out"))
    app.card.value = "hero"
    assert app.card_editor.card.name == "hero" and app.card_editor.description.value == "a knight"
    app.card_editor.description.value = "a tired knight"
    app.card_editor.save_button.click()
    assert app.make_config().prompt.startswith("a tired knight")  # the next picture reads the saved card
    app.card.value = ""
    assert app.card_editor.card is None and app.card_editor.save_button.disabled
