"""`@name` in prompts (charstudio.cast.expand): the grammar, its errors, the payloads per family,
the recipe's `cast` record (PNG and A1111 text), and two characters drawn apart on mini."""

from __future__ import annotations

import pytest

from charstudio.cast import expand_prompt, has_mentions
from charstudio.cast.card import Character
from charstudio.errors import ConfigError

RIN = Character(name="rin", description="a girl", traits={"hair": "long red hair", "outfit": "a blue dress"},
                wardrobe={"school": {"main": "a white shirt and trousers", "headwear": "a hat"}},
                expressions={"happy": "smiling, happy"},
                families={"sd1": {"lora": "rin_sd15", "trigger": "rinchan", "weight": 0.8, "embeddings": ["rin_eyes"]},
                          "sdxl": {"lora": "rin_xl", "trigger": "rin_xl_tok"}})
KAI = Character(name="kai", description="a boy", traits={"hair": "spiky blue hair"})
CARDS = [RIN, KAI]


def test_the_issue_example_expands_each_character_with_the_outfit_the_phrase_names():
    e = expand_prompt("@rin waving at @kai, outfit @rin:school", cards=CARDS)
    assert e.prompt == "a girl, long red hair, a white shirt and trousers, a hat waving at a boy, spiky blue hair"
    assert e.names == ["rin", "kai"] and e.scene == "waving at"
    assert [(r["name"], r["outfit"]) for r in e.record] == [("rin", "school"), ("kai", None)]


def test_the_grammar_outfit_expression_weights_repeats_and_literal_at():
    e = expand_prompt("@rin:school:happy", cards=CARDS)
    assert e.prompt == "a girl, long red hair, a white shirt and trousers, a hat, smiling, happy"
    assert expand_prompt("@rin::happy", cards=CARDS).record[0]["expression"] == "happy"
    # A colon and a number is A1111's weight, not an outfit.
    assert expand_prompt("(@kai:1.2)", cards=CARDS).prompt == "(a boy, spiky blue hair:1.2)"
    # A second mention is the short form (trigger, else description); \@ and e-mail addresses stay text.
    e = expand_prompt("@kai hugs @rin, @kai smiles, mail kai@example.com \\@home", family="sd1", cards=CARDS)
    assert e.prompt == ("a boy, spiky blue hair hugs rinchan, a girl, long red hair, a blue dress, a boy smiles, "
                        "mail kai@example.com @home")
    assert has_mentions("@rin") and not has_mentions("kai@example.com") and not has_mentions("\\@rin")
    assert expand_prompt("expression @rin:happy, @rin", cards=CARDS).prompt.endswith("smiling, happy")


def test_payloads_follow_the_family():
    sd1 = expand_prompt("@rin and @kai", family="sd1", cards=CARDS)
    assert sd1.prompt.startswith("rinchan, a girl") and sd1.loras == {"rin_sd15": 0.8}
    assert sd1.embeddings == ["rin_eyes"] and sd1.record[0]["payload"]["lora"] == "rin_sd15"
    assert sd1.record[1]["payload"] is None
    xl = expand_prompt("@rin and @kai", family="sdxl", cards=CARDS)
    assert xl.prompt.startswith("rin_xl_tok, a girl") and xl.loras == {"rin_xl": 1.0} and xl.embeddings == []
    assert expand_prompt("@rin", cards=CARDS).loras == {}  # no family: only the any-family payload


@pytest.mark.parametrize("text, field, words", [
    ("@zed waves", "prompt", ["'@zed'", "@kai, @rin"]),
    ("@rin:gala", "@rin:outfit", ["'gala'", "school"]),
    ("@rin::crying", "@rin:expression", ["'crying'", "happy"]),
    ("@rin:school, outfit @rin:gala", "@rin:outfit", ["'gala'", "already wears"]),
])
def test_an_unknown_card_outfit_or_expression_is_named_with_what_exists(text, field, words):
    with pytest.raises(ConfigError) as info:
        expand_prompt(text, cards=CARDS)
    assert info.value.field == field and all(w in str(info.value) for w in words), str(info.value)


def test_an_unknown_shipped_card_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match=r"'@nobody'.*@kai.*@rin"):
        expand_prompt("@nobody waves")
    assert "white shirt and trousers" in expand_prompt("outfit @rin:school, @rin").prompt


def test_the_recipe_records_the_cast_and_the_png_reruns_without_the_card(tiny_studio, tmp_path, monkeypatch, one_thread):
    from charstudio.cast import library
    from charstudio.recipe.metadata import format_parameters, parse_parameters
    from charstudio.result import Result

    result = tiny_studio.generate("@rin waving at @kai", width=64, height=64, num_inference_steps=2, seed=3)
    recipe = result.recipe
    assert "@" not in recipe.prompt and "long red hair" in recipe.prompt and "spiky blue hair" in recipe.prompt
    assert [c["name"] for c in recipe.cast] == ["rin", "kai"] and recipe.cast[0]["family"] == "sd1"
    # Two characters get a region each, left to right in order of mention.
    assert [(r["character"], r["box"]) for r in recipe.regions] == [("rin", "left"), ("kai", "right")]
    assert "long red hair" in recipe.regions[0]["prompt"] and "spiky" not in recipe.regions[0]["prompt"]
    # A1111's text: the expanded prompt, and the names in a field of their own, read back.
    text = format_parameters(recipe)
    assert text.startswith(recipe.prompt + "\n") and 'Cast: "rin, kai"' in text
    assert parse_parameters(text)["cast"] == [{"name": "rin"}, {"name": "kai"}]
    # The PNG re-runs with no card to be found.
    path = result.save(tmp_path)[0]
    monkeypatch.setattr(library, "card_files", lambda: {})
    again = Result.from_png(path).recipe
    assert again.cast == recipe.cast and again.prompt == recipe.prompt
    assert tiny_studio.run(again).image.tobytes() == result.image.tobytes()


def test_a_card_lora_for_the_family_is_loaded_into_the_recipe(tmp_path, monkeypatch, one_thread):
    from helpers import TinyFamily, lora_model, save_lora_model

    family = TinyFamily("sd1")
    files = save_lora_model(family, lora_model(family), tmp_path / "lora", "hero")
    cards = tmp_path / "prompts" / "characters"
    cards.mkdir(parents=True)
    (cards / "hero.yaml").write_text(f"name: hero\ndescription: a knight\nfamilies:\n  sd1:\n    lora: {files['diffusers']}"
                                     "\n    weight: 0.6\n    trigger: hrx\n  sdxl:\n    lora: nowhere.safetensors\n")
    monkeypatch.setenv("CHARSTUDIO_PROMPTS", str(tmp_path / "prompts"))
    studio = family.studio()
    config = studio.make_config("@hero on a hill", width=64, height=64, num_inference_steps=1)
    assert config.prompt == "hrx, a knight on a hill" and config.regions == []
    assert list(config.loras.values()) == [0.6] and studio.active_loras == {}  # loaded, off until run
    assert config.cast[0]["payload"]["lora"] == str(files["diffusers"])
    # With a second character, the card's LoRA goes to its own region only (charstudio.workflows.regional_loras).
    (adapter,) = config.loras
    two = studio.make_config("@hero and @kai", width=128, height=64, num_inference_steps=1)
    assert [r.get("loras") for r in two.regions] == [{adapter: 0.6}, None] and adapter not in two.loras


def test_mini_draws_rin_and_kai_each_with_their_own_hair_colour(mini_studio, one_thread):
    """No colour word in the scene line: the cards carry them. Two people side by side, 10 seeds:
    rin (left) nearest red and kai (right) nearest blue in at least 8 (measured: 10 of 10)."""
    from charstudio.mini.measure import hair_region, nearest_colour, region_colour
    from charstudio.mini.world import HAIR_COLOURS
    from charstudio.pose.compose import side_by_side

    group = side_by_side("standing_front", "standing_front", width=128, height=64)
    scene = "@rin and @kai standing together"
    hits = 0
    for seed in range(10):
        image = mini_studio.generate(scene, pose=group, width=128, height=64, seed=seed, num_inference_steps=8).image
        got = [nearest_colour(region_colour(image, hair_region(p)), HAIR_COLOURS) for p in group.people]
        hits += got == ["red", "blue"]
    assert hits >= 8, hits


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_studio_expands_for_its_own_family(family, tmp_path, monkeypatch):
    from helpers import TinyFamily

    cards = tmp_path / "prompts" / "characters"
    cards.mkdir(parents=True)
    (cards / "duo.yaml").write_text("name: duo\ndescription: a girl\nfamilies:\n  sd1: {trigger: duo15}\n"
                                    "  sdxl: {trigger: duoxl}\n", encoding="utf-8")
    monkeypatch.setenv("CHARSTUDIO_PROMPTS", str(tmp_path / "prompts"))
    config = TinyFamily(family).studio().make_config("@duo smiling", num_inference_steps=1)
    trigger = {"sd1": "duo15", "sdxl": "duoxl"}[family]
    assert config.prompt == f"{trigger}, a girl smiling" and config.cast[0]["family"] == family
