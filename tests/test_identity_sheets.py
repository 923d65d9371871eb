"""Identity in every multi-picture result (#36): sheets, turnarounds, expression sheets and LoRA
sweeps record each picture's identity score against the first and the pairwise matrix, with the
scorer's name, on the result, in sheet.json and in each PNG (beside the recipe); scoring never
fails a sheet; the CLI's identity flags are checked before the model loads. Plumbing on both
families; the palette check's behaviour on mini."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from charstudio.cli import main
from charstudio.errors import ConfigError, ModelLoadError
from charstudio.identity import IdentityReport, Scorer
from charstudio.recipe.metadata import read_recipe

FAST = dict(num_inference_steps=2, width=64, height=64)


class PixelScorer(Scorer):
    """A scorer of the test's own: the picture's 8x8 pixels, centred (1 - cosine as difference)."""

    name = "pixels"
    threshold = 0.5

    def embed(self, images):
        return np.stack([np.asarray(im.convert("RGB").resize((8, 8)), dtype=np.float32).ravel() - 128.0
                         for im in images])


def saved_identity(folder, files):
    """sheet.json's identity record and each picture's PNG identity chunk and recipe."""
    sheet = json.loads((folder / "sheet.json").read_text())
    pngs = []
    for name in files:
        image, recipe = read_recipe(folder / name)
        pngs.append((json.loads(image.text["charstudio_identity"]), recipe))
    return sheet, pngs


def check_recorded(result, folder, scorer: Scorer):
    """The result's report is the scorer's own report of its pictures, and sheet.json and every
    PNG say the same, naming the scorer; each PNG's recipe is the picture's recipe."""
    expected = scorer.report(result.images, anchor=0, labels=result.labels)
    report = result.identity
    assert isinstance(report, IdentityReport) and report.scorer == scorer.name
    assert report.labels == result.labels and report.anchor == 0
    np.testing.assert_allclose(report.scores, expected.scores, atol=1e-5)
    np.testing.assert_allclose(report.matrix, expected.matrix, atol=1e-5)
    paths = result.save(folder)
    sheet, pngs = saved_identity(folder, [p.name for p in paths if p.name[:2].isdigit()])
    assert sheet["identity"]["scorer"] == scorer.name and sheet["identity"]["scores"] == report.scores
    assert sheet["identity"]["matrix"] == report.matrix and sheet["identity"]["threshold"] == report.threshold
    assert sheet["settings"]["identity"]["scorer"] == scorer.name
    assert len(pngs) == len(result.images)
    for i, (chunk, recipe) in enumerate(pngs):
        assert chunk["scorer"] == scorer.name and chunk["index"] == i and chunk["label"] == result.labels[i]
        assert chunk["score"] == report.scores[i] and chunk["row"] == report.matrix[i]
        assert recipe == result.recipes[i]  # the chunk sits beside the recipe; the recipe is unchanged
    return sheet


def test_sheet_records_identity_on_the_result_in_sheet_json_and_each_png(family_studio, tmp_path):
    scorer = PixelScorer()
    sheet = family_studio.sheet("a knight", ["standing_front", "walking", "waving"], seed=4, same_noise=False,
                                scorer=scorer, **FAST)
    assert sheet.identity.scores[0] == pytest.approx(1.0) and min(sheet.identity.scores[1:]) < 0.999
    check_recorded(sheet, tmp_path, scorer)


def test_turnaround_expressions_and_pose_animation_record_identity(family_studio, tmp_path):
    scorer = PixelScorer()
    turn = family_studio.turnaround("a knight", ["front", "back"], seed=4, scorer=scorer, **FAST)
    saved = check_recorded(turn, tmp_path / "turn", scorer)
    # The back view was checked against the front (the mirror check), and it is recorded.
    assert saved["identity"]["checks"][1]["view"]["mirror"]["checked"] is True
    faces = family_studio.expressions("a knight", ["smiling", "angry"], seed=4, scorer=scorer, **FAST)
    check_recorded(faces, tmp_path / "faces", scorer)
    frames = family_studio.pose_animation("a knight", "standing_front", "waving", frames=2, seed=4, scorer=scorer,
                                         **FAST)
    check_recorded(frames, tmp_path / "frames", scorer)


def test_lora_sweep_records_identity(family, tmp_path):
    from helpers import lora_model, save_lora_model

    files = save_lora_model(family, lora_model(family), tmp_path / "lora", "hero")
    studio = family.studio()
    studio.load_lora(files["diffusers"], weight=1.0, adapter_name="hero")
    scorer = PixelScorer()
    sweep = studio.lora_sweep("a knight", "hero", [0.0, 1.0], seed=4, scorer=scorer, **FAST)
    assert [r.loras for r in sweep.recipes] == [{"hero": 0.0}, {"hero": 1.0}]
    assert sweep.extras == {"adapter": "hero", "weights": [0.0, 1.0]}
    saved = check_recorded(sweep, tmp_path / "sweep", scorer)
    assert saved["settings"]["workflow"] == "lora_sweep" and sweep.labels == ["hero 0", "hero 1"]
    assert studio.active_loras == {"hero": 1.0}


def test_the_automatic_scorer_is_used_and_named(family_studio):
    from charstudio.identity import get_scorer

    sheet = family_studio.sheet("a knight", ["standing_front", "walking"], seed=4, **FAST)
    assert sheet.identity is not None and sheet.identity.scorer == get_scorer(None).name
    assert sheet.settings["identity"]["scorer"] == sheet.identity.scorer


def test_no_scorer_available_records_none_in_one_log_line(family_studio, monkeypatch, caplog, tmp_path):
    import charstudio.identity

    def unavailable(scorer=None, **kwargs):
        raise ModelLoadError("scorer='auto': nothing is available here")

    monkeypatch.setattr(charstudio.identity, "get_scorer", unavailable)
    with caplog.at_level(logging.INFO, logger="charstudio"):
        sheet = family_studio.sheet("a knight", ["standing_front", "walking"], seed=4, **FAST)
    assert len(sheet.images) == 2 and sheet.identity is None
    lines = [r.getMessage() for r in caplog.records if "identity" in r.getMessage()]
    assert len(lines) == 1 and "no scorer available" in lines[0], lines
    sheet.save(tmp_path)
    data = json.loads((tmp_path / "sheet.json").read_text())
    assert data["identity"]["scorer"] is None and data["identity"]["scores"] is None
    chunk, _ = saved_identity(tmp_path, ["00-standing-front.png"])[1][0]
    assert chunk["score"] is None


def test_a_scorer_that_breaks_does_not_fail_the_sheet(family_studio, caplog):
    class Broken(PixelScorer):
        def embed(self, images):
            raise RuntimeError("onnxruntime fell over")

    with caplog.at_level(logging.WARNING, logger="charstudio"):
        sheet = family_studio.sheet("a knight", ["standing_front", "walking"], seed=4, scorer=Broken(),
                                    min_identity=0.9, **FAST)
    assert len(sheet.images) == 2 and sheet.identity is None
    assert any("pixels scorer failed" in r.getMessage() for r in caplog.records)


def test_a_bad_scorer_name_is_refused_before_drawing(family_studio, monkeypatch):
    calls = []
    monkeypatch.setattr(family_studio, "run_batch", lambda *a, **k: calls.append(a))
    with pytest.raises(ConfigError) as err:
        family_studio.sheet("a knight", ["standing_front"], scorer="nope", **FAST)
    assert err.value.field == "scorer" and not calls


SHEETS = [
    ["sheet", "rin", "--poses", "standing_front,walking"],
    ["turnaround", "rin", "--views", "front,back"],
    ["expressions", "rin", "--expressions", "smiling,angry"],
]


@pytest.mark.parametrize("command", SHEETS, ids=lambda c: c[0])
@pytest.mark.parametrize("flag,value,shown,expected", [("--min-identity", "high", "'high'", "'auto'"),
                                                       ("--min-identity", "2", "'2'", "between -1 and 1"),
                                                       ("--max-tries", "0", "0", "between 1 and 16"),
                                                       ("--scorer", "nope", "'nope'", "'mini'")])
def test_cli_identity_flags_are_checked_before_the_model_loads(command, flag, value, shown, expected, tmp_path,
                                                               capsys):
    out = tmp_path / "out"
    assert main([*command, flag, value, "--model", "sd99", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{flag}={shown}" in err and expected in err and "sd99" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("command", SHEETS, ids=lambda c: c[0])
def test_cli_prints_the_scores_and_the_one_line_never_reached(command, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*command, "--model", "tiny", "--steps", "2", "--width", "64", "--height", "64", "--seed", "3",
                 "--different-noise", "--scorer", "mini", "--min-identity", "1", "--max-tries", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    data = json.loads((out / "sheet.json").read_text())
    assert data["identity"]["scorer"] == "mini" and data["identity"]["min_identity"] == 1.0
    assert [len(t) for t in data["identity"]["tries"]] == [1, 2]  # the second view re-rolled once
    assert [line for line in printed if line.startswith("identity against")]
    never = [line for line in printed if "never reached" in line]
    assert len(never) == 1 and never[0] == data["identity"]["note"]


# -- the palette on mini ---------------------------------------------------------------------------------
PALETTE_POSES = ["standing_front", "walking", "waving", "running"]


def red_hair_card():
    """A mini-world card whose palette asks for red hair (the world's red, #d72828) and a blue dress."""
    from charstudio.character import Character

    return Character(name="redhair", description="a girl",
                     traits={"eyes": "green eyes", "outfit": "a blue dress", "background": "white background"},
                     palette={"hair": "#d72828", "outfit": "#3250c8"})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_palette_flags_the_view_forced_to_blue_hair_and_no_other_part(mini_studio, seed):
    # Every view's words ask for the card's red hair, except the third, overridden to blue.
    words = ["long red hair", "long red hair", "long blue hair", "long red hair"]
    sheet = mini_studio.sheet(red_hair_card(), PALETTE_POSES, seed=seed, num_inference_steps=10, extras=words)
    palettes = [c["palette"] for c in sheet.identity_record.checks]
    assert [p["failed"] for p in palettes] == [[], [], ["hair"], []], palettes
    assert palettes[2]["delta_e"]["hair"] > 2 * palettes[2]["tolerance"]["hair"]  # a margin, not a near miss
    assert all(p["delta_e"]["hair"] < p["tolerance"]["hair"] / 2 for i, p in enumerate(palettes) if i != 2)
    assert [c["passed"] for c in sheet.identity_record.checks] == [True, True, False, True]
    assert sheet.never_reached == ["waving"] and "palette: hair" in sheet.identity_note


def test_a_failed_palette_check_triggers_the_reroll(mini_studio):
    words = ["long red hair", "long red hair", "long blue hair", "long red hair"]
    sheet = mini_studio.sheet(red_hair_card(), PALETTE_POSES, seed=1, num_inference_steps=10, extras=words,
                              min_identity=-1.0, max_tries=2)  # any score passes: only the checks re-roll
    assert [len(t) for t in sheet.identity_record.tries] == [1, 1, 2, 1]
    assert [t["seed"] for t in sheet.identity_record.tries[2]] == [1, 2]
    assert sheet.never_reached == ["waving"]
