"""Cards version 2 (the character bible, charstudio.cast): new fields, payloads per family, old
cards unchanged, and the round-trip writer that keeps comments and the user's own keys."""

from __future__ import annotations

import re

import pytest

from charstudio.cast.card import CardPayload, Character
from charstudio.character import list_characters, load_character
from charstudio.errors import CardError, ConfigError, OutputError

COMMENTED = """\
# Mira's card: keep this note.
name: mira2
description: a shy witch  # the canonical line
traits:
  hair: short teal hair  # teal, never green
  outfit: a purple robe
x-notes: ask the art lead before changing the hat
wardrobe:
  # the festival outfit is new
  festival:
    main: a white robe
    headwear: a hat
"""


def test_every_shipped_card_loads_and_a_card_without_a_wardrobe_keeps_its_words():
    # Old (version 1) cards load unchanged: their words for any family are the subject they always had.
    for name in list_characters():
        card = load_character(name)
        if not card.wardrobe:
            assert card.words() == card.subject == card.words("sd1") == card.words("sdxl")
    aiko = load_character("aiko")
    assert aiko.subject.startswith("a cheerful young swordswoman, long silver hair")


def test_version_2_fields_load_and_outfits_and_expressions_give_their_words():
    rin = load_character("rin")
    assert set(rin.wardrobe) >= {"default", "school", "casual"} and rin.keep == ["long red hair", "green eyes"]
    assert rin.outfit_words("casual") == "a yellow dress, glasses"
    assert rin.expression_words("smiling") == "smiling, happy"
    # An outfit takes the outfit traits' place (the dress and the hat go), the rest stays in order.
    assert rin.words(outfit="school") == "a girl, long red hair, green eyes, a white shirt and trousers, yellow background"
    assert rin.words(expression="smiling").endswith("yellow background, smiling, happy")
    with pytest.raises(ConfigError, match=r"'gala'.*default, school, casual"):
        rin.outfit_words("gala")
    with pytest.raises(ConfigError, match=r"'crying'.*neutral, smiling, surprised"):
        rin.expression_words("crying")


def test_payloads_per_family_fall_back_to_the_top_level_lora_and_trigger():
    card = Character(name="hero", description="a knight", lora="hero_any", trigger="hrx", lora_weight=0.7,
                     families={"sdxl": {"lora": "hero_xl.safetensors", "weight": 0.9, "ip_adapter_scale": 0.5}})
    assert card.payload("sd1") == CardPayload("sd1", "hero_any", "hrx", 0.7, (), None)
    assert card.payload("sdxl") == CardPayload("sdxl", "hero_xl.safetensors", "hrx", 0.9, (), 0.5)
    assert card.payload(None).lora == "hero_any"
    assert Character(name="plain", description="a cat").payload("sd1") is None
    # The family's trigger writes the character's words on that family.
    both = Character(name="two", description="a girl", families={"sd1": {"trigger": "tw1"}, "sdxl": {"trigger": "tw2"}})
    assert both.words("sd1").startswith("tw1, ") and both.words("sdxl").startswith("tw2, ") and both.words() == "a girl"
    with pytest.raises(ConfigError, match="family='sd3'"):
        card.payload("sd3")


@pytest.mark.parametrize("data, field", [
    ({"wardrobe": {"school": {"main": "a shirt", "gloves": "white gloves"}}}, "wardrobe.school"),
    ({"wardrobe": {"my outfit": "a shirt"}}, "wardrobe"),
    ({"families": {"sd3": {"lora": "x"}}}, "families"),
    ({"families": {"sd1": {"weight": "strong"}}}, "families.sd1.weight"),
    ({"families": {"sdxl": {"ip_adapter_scale": 5}}}, "families.sdxl.ip_adapter_scale"),
    ({"keep": "long hair"}, None),  # one item without brackets is fine
    ({"keep": [1, 2]}, "keep"),
    ({"expressions": {"happy": ""}}, "expressions.happy"),
    ({"identity_history": [{"date": "2026-12-07", "mean": "high"}]}, "identity_history[0].mean"),
    ({"identity_history": [{"when": "today"}]}, "identity_history[0]"),
])
def test_a_bad_version_2_field_is_refused_naming_the_field(data, field):
    if field is None:
        assert Character(name="c", description="a girl", **data).keep == ["long hair"]
        return
    with pytest.raises(CardError, match=re.escape(f"field '{field}'=")):
        Character.from_dict({"name": "c", "description": "a girl", **data}, source="c.yaml")


def test_an_expression_list_names_each_expression_by_its_words():
    card = Character(name="c", description="a girl", expressions=["smiling", "sad"])
    assert card.expressions == {"smiling": "smiling", "sad": "sad"}


def test_a_user_key_is_kept_but_a_typo_is_still_refused(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: c\ndescription: a girl\nx-notes: mine\n", encoding="utf-8")
    assert Character.load(f).description == "a girl"
    f.write_text("name: c\ndescription: a girl\nwardrobe_: {}\n", encoding="utf-8")
    with pytest.raises(CardError, match="unknown field 'wardrobe_'"):
        Character.load(f)


def test_saving_an_edited_card_keeps_its_comments_and_unknown_keys(tmp_path):
    f = tmp_path / "mira2.yaml"
    f.write_text(COMMENTED, encoding="utf-8")
    card = Character.load(f)
    card.description = "a shy apprentice witch"
    card.wardrobe["school"] = {"main": "a black robe"}
    card.families = {"sd1": {"lora": "mira_sd15", "trigger": "mra"}}
    card.save(f, overwrite=True)
    text = f.read_text(encoding="utf-8")
    for kept in ("# Mira's card: keep this note.", "# the canonical line", "# teal, never green",
                 "# the festival outfit is new", "x-notes: ask the art lead before changing the hat"):
        assert kept in text, kept
    assert re.search(r"description: a shy apprentice witch +# the canonical line", text)  # the comment stays on its line
    again = Character.load(f)
    assert again == card and again.wardrobe["festival"] == {"main": "a white robe", "headwear": "a hat"}
    assert again.payload("sd1").lora == "mira_sd15"


def test_saving_never_overwrites_silently(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(COMMENTED, encoding="utf-8")
    with pytest.raises(OutputError, match="already exists"):
        Character(name="c", description="other").save(f)
    assert f.read_text(encoding="utf-8") == COMMENTED
    fresh = Character(name="c", description="a girl", wardrobe={"school": {"main": "a shirt"}}).save(tmp_path / "n.yaml")
    assert Character.load(fresh).wardrobe == {"school": {"main": "a shirt"}}
