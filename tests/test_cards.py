"""Character cards and styles: load, validate, compose, save."""

from __future__ import annotations

import pytest

from charstudio import Character, compose_prompt, list_characters, load_character, load_styles
from charstudio.errors import OutputError


def test_ships_at_least_4_cards_and_6_styles_and_all_load():
    names = list_characters()
    assert len(names) >= 4
    styles = load_styles()
    assert len(styles) >= 6
    for name in names:
        card = load_character(name)
        assert card.name == name
        assert card.style is None or card.style in styles, f"{name} uses unknown style {card.style}"


def test_card_plus_style_composes_prompt():
    card = load_character("aiko")
    prompt, negative = compose_prompt(card, "watercolor")
    assert prompt.startswith(card.subject) and "watercolor painting" in prompt
    assert card.traits["eyes"] in prompt
    assert card.negative_prompt in negative and load_styles()["watercolor"].negative_prompt in negative
    # the card's own style by default, none on request
    assert "anime style" in compose_prompt(card)[0]
    assert compose_prompt(card, "none") == (card.subject, card.negative_prompt)


def test_trigger_word_leads_the_prompt():
    card = Character(name="zed", description="a pirate", trigger="zedchar", lora="zed")
    assert compose_prompt(card, "none")[0].startswith("zedchar, a pirate")


def test_card_save_load_round_trip_and_no_silent_overwrite(tmp_path):
    card = Character(name="nova", description="a star pilot", traits={"hair": "short white hair"}, seed=5,
                     style="sketch")
    path = tmp_path / "nova.yaml"
    card.save(path)
    assert load_character(str(path)) == card
    with pytest.raises(OutputError, match="already exists"):
        card.save(path)
    card.save(path, overwrite=True)


def test_user_prompt_folder_overrides_and_extends(tmp_path, monkeypatch):
    (tmp_path / "characters").mkdir()
    Character(name="aiko", description="my own aiko").save(tmp_path / "characters" / "aiko.yaml")
    (tmp_path / "styles.yaml").write_text("neon:\n  prompt: '{prompt}, neon glow'\n")
    monkeypatch.setenv("CHARSTUDIO_PROMPTS", str(tmp_path))
    assert load_character("aiko").description == "my own aiko"
    assert "neon" in load_styles() and "watercolor" in load_styles()


def test_bad_styles_file_names_the_style_and_field(tmp_path, monkeypatch):
    from charstudio.errors import CardError

    (tmp_path / "styles.yaml").write_text("broken:\n  prompt: 'no placeholder here'\n")
    monkeypatch.setenv("CHARSTUDIO_PROMPTS", str(tmp_path))
    with pytest.raises(CardError, match=r"style 'broken' field 'prompt'"):
        load_styles()
