"""`charstudio card new|show|check` and `@name` prompts on the command line."""

from __future__ import annotations

from charstudio.cli import main


def test_card_show_prints_the_wardrobe_expressions_payloads_and_history(tmp_path, capsys, monkeypatch):
    cards = tmp_path / "prompts" / "characters"
    cards.mkdir(parents=True)
    (cards / "hero.yaml").write_text(
        "name: hero\ndescription: a knight\nkeep: [silver armour]\nwardrobe:\n  travel:\n    main: a grey cloak\n"
        "    shoes: boots\nexpressions: [grim]\nlora: hero_any\nfamilies:\n  sdxl:\n    lora: hero_xl\n"
        "    ip_adapter_scale: 0.5\nidentity_history:\n  - {date: 2026-12-01, sheet: out/a, scorer: ccip, mean: 0.9, "
        "min: 0.8}\n", encoding="utf-8")
    monkeypatch.setenv("CHARSTUDIO_PROMPTS", str(tmp_path / "prompts"))
    assert main(["card", "show", "hero"]) == 0
    out = capsys.readouterr().out
    for line in ("keep:        silver armour", "travel     a grey cloak, boots", "grim       grim",
                 "sd1        lora hero_any, weight 1.0", "sdxl       lora hero_xl, weight 1.0, ip_adapter_scale 0.5",
                 "date 2026-12-01, sheet out/a, scorer ccip, mean 0.9, min 0.8"):
        assert line in out, line


def test_card_new_from_another_card_keeps_its_comments_and_refuses_to_overwrite(tmp_path, capsys):
    folder = tmp_path / "cards"
    assert main(["card", "new", "rin2", "--from", "rin", "--description", "a tall girl", "--dir", str(folder)]) == 0
    path = folder / "rin2.yaml"
    assert capsys.readouterr().out.strip() == str(path)
    text = path.read_text(encoding="utf-8")
    assert "name: rin2" in text and "description: a tall girl" in text and "# Written in the words" in text
    assert "school:" in text and main(["card", "check", str(path)]) == 0
    assert "ok: " in capsys.readouterr().out
    before = path.read_text(encoding="utf-8")
    assert main(["card", "new", "rin2", "--description", "x", "--dir", str(folder)]) == 2
    assert "already exists" in capsys.readouterr().err and path.read_text(encoding="utf-8") == before
    assert main(["card", "new", "empty", "--dir", str(folder)]) == 2  # a card needs words
    assert "field 'description'" in capsys.readouterr().err and not (folder / "empty.yaml").exists()


def test_card_check_names_the_bad_field_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndescription: a girl\nwardrobe:\n  school:\n    gloves: white gloves\n", encoding="utf-8")
    assert main(["card", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.yaml" in err and "field 'wardrobe.school'='gloves'" in err
    assert main(["card", "check", "nobody"]) == 2
    assert "known cards" in capsys.readouterr().err


def test_generate_expands_names_on_the_command_line(tmp_path, capsys, one_thread):
    from charstudio.result import Result

    out = tmp_path / "out"
    assert main(["generate", "@rin waving at @kai, outfit @rin:school", "--model", "tiny", "--steps", "1",
                 "--width", "64", "--height", "64", "--out", str(out)]) == 0
    recipe = Result.from_png(capsys.readouterr().out.split()[0]).recipe
    assert [c["name"] for c in recipe.cast] == ["rin", "kai"] and recipe.cast[0]["outfit"] == "school"
    assert "white shirt and trousers" in recipe.prompt and len(recipe.regions) == 2
    assert main(["generate", "@rin:gala", "--model", "tiny", "--steps", "1", "--out", str(out)]) == 2
    assert "'gala'" in capsys.readouterr().err
