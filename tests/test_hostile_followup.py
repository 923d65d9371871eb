"""Follow-up of the hostile-input trial (#34): valid-looking input that crashed with a raw
TypeError, hires and --out refusals that came only after the model load or the whole sheet, and
a message that echoed a 3,000-character value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from charstudio.errors import ConfigError, OutputError

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(num_inference_steps=1, width=64, height=64, seed=3, reference_strength=0.0, compute_score=False)


@pytest.fixture(scope="module")
def k_studio(tmp_path_factory):
    """A tiny Studio of the module's own with a random LoRA loaded as "k" (active at 1.0)."""
    from helpers import TinyFamily, lora_model, save_lora_model

    family = TinyFamily("sd1")
    files = save_lora_model(family, lora_model(family, text_encoders=False), tmp_path_factory.mktemp("k"), "k")
    studio = family.studio()
    studio.load_lora(files["diffusers"], weight=1.0, adapter_name="k")
    assert studio.active_loras == {"k": 1.0}
    return studio


# --- 1. keyword collisions: loras= is the recipe's weights; per-picture keys are refused -------------
@pytest.mark.parametrize("workflow", ["turnaround", "expressions", "sheet"])
def test_sheet_workflows_take_loras_as_the_recipes_weights(k_studio, workflow):
    call = {"turnaround": lambda **kw: k_studio.turnaround("rin", ["front"], **kw),
            "expressions": lambda **kw: k_studio.expressions("rin", ["smiling"], crop=None, **kw),
            "sheet": lambda **kw: k_studio.sheet("rin", ["walking"], **kw)}[workflow]
    result = call(loras={"k": 0.5}, **FAST)
    assert [r.loras for r in result.recipes] == [{"k": 0.5}]
    assert k_studio.active_loras == {"k": 1.0}  # the studio's own weights are untouched


def test_make_config_loras_replace_the_active_ones_and_keep_the_cards(k_studio, monkeypatch):
    from charstudio.character import Character

    monkeypatch.setattr(k_studio.lora_set, "load_off", lambda source: "card_lora")
    card = Character(name="x", description="a fox", lora="card_lora.safetensors", lora_weight=0.7)
    assert k_studio.make_config(card, loras={}).loras == {"card_lora": 0.7}
    assert k_studio.make_config(card, loras={"k": 0.25}).loras == {"k": 0.25, "card_lora": 0.7}
    assert k_studio.make_config(card).loras == {"k": 1.0, "card_lora": 0.7}
    with pytest.raises(ConfigError) as err:
        k_studio.make_config("a fox", loras=[("k", 0.5)])
    assert err.value.field == "loras" and "mapping" in str(err.value)


@pytest.mark.parametrize("call, field, advice", [
    (lambda s: s.turnaround("rin", pose="walking", **FAST), "pose", "views"),
    (lambda s: s.sheet("rin", ["walking"], pose="walking", **FAST), "pose", "poses"),
    (lambda s: s.expressions("rin", ["smiling"], prompt="x", **FAST), "prompt", "first argument"),
    (lambda s: s.sheet("rin", ["walking"], prompt="x", **FAST), "prompt", "first argument"),
    (lambda s: s.make_config("rin", prompt="x"), "prompt", "first argument"),
])
def test_keys_a_sheet_sets_per_picture_are_refused_naming_what_to_use(k_studio, monkeypatch, call, field, advice):
    monkeypatch.setattr(k_studio, "run_batch", lambda *a, **k: pytest.fail("drew before refusing"))
    with pytest.raises(ConfigError) as err:
        call(k_studio)
    assert err.value.field == field and advice in str(err.value)
    assert "\n" not in str(err.value)


# --- 2. hires strength: refused before the model loads, naming the flag, with the right advice -------
@pytest.fixture
def no_model_load(monkeypatch):
    from charstudio import Studio

    def refuse(*a, **k):
        raise AssertionError("the model loaded before the input was checked")

    monkeypatch.setattr(Studio, "from_pretrained", refuse)


@pytest.mark.parametrize("extra, least, fewer", [
    (["--steps", "2", "--hires-steps", "1"], "0.001", False),
    (["--steps", "5"], "0.005", True),
])
def test_cli_hires_strength_too_low_is_refused_before_the_load(no_model_load, capsys, tmp_path, extra, least, fewer):
    from charstudio.cli import main

    rc = main(["generate", "rin", "--model", "tiny", "--hires", "1.5", "--hires-strength", "0.0005",
               "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert rc != 0
    assert "--hires-strength=0.0005" in err and "hires.strength" not in err
    assert f"at least {least}" in err
    assert ("--hires-steps" in err) is fewer  # no "fewer steps" advice when one step is all there is


def test_recipe_hires_advice_gives_the_smallest_strength_that_runs():
    from charstudio.recipe.hires import check_second_pass
    from charstudio.recipe.steps import MAX_SCHEDULE, min_strength, schedule_length

    for run in (1, 3, 7, 1000):
        s = min_strength(run)
        check_second_pass(s, run)  # runs: the second pass's schedule fits
        length = schedule_length(run, s)
        assert length <= MAX_SCHEDULE and int(length * s) >= run
        with pytest.raises(ConfigError):
            check_second_pass(s * 0.999, run)


# --- 3. staged --out: refused before the model loads, the writer's own rule ------------------------
SHEET = ["sheet", "rin", "--poses", "walking", "--model", "tiny", "--steps", "1"]


def _sheet_folder(path: Path) -> Path:
    path.mkdir()
    (path / "sheet.json").write_text("{}", encoding="utf-8")
    (path / "grid.png").write_bytes(b"")
    return path


@pytest.mark.parametrize("command", [SHEET, ["turnaround", "rin", "--model", "tiny", "--steps", "1"],
                                     ["expressions", "rin", "--model", "tiny", "--steps", "1"]])
def test_cli_symlink_out_is_refused_before_the_load(no_model_load, capsys, tmp_path, command):
    from charstudio.cli import main

    real = _sheet_folder(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    rc = main([*command, "--out", str(link)])  # without --overwrite: the link is what to fix
    err = capsys.readouterr().err
    assert rc != 0 and "--out=" in err and "symbolic link" in err and "--overwrite" not in err
    assert sorted(p.name for p in real.iterdir()) == ["grid.png", "sheet.json"]


def test_cli_out_with_an_unwritable_parent_is_refused_before_the_load(no_model_load, capsys, tmp_path,
                                                                      monkeypatch):
    from charstudio.cli import main

    parent = tmp_path / "locked"
    parent.mkdir()
    out = parent / "sheet"
    out.mkdir()
    real_access = os.access

    def access(path, mode, *a, **k):  # the tests may run as root, whom permissions do not stop
        if Path(path) == parent and mode & os.W_OK:
            return False
        return real_access(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)
    rc = main([*SHEET, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and f"--out={str(out)!r}" in err and str(parent) in err and "permission" in err


def test_staged_folder_and_the_cli_share_one_rule(tmp_path):
    from charstudio.io_utils import check_staged_target, staged_folder

    link = tmp_path / "link"
    link.symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(OutputError) as early:
        check_staged_target(link, "--out")
    with pytest.raises(OutputError) as late:
        with staged_folder(link, field="--out"):
            pytest.fail("staged a folder for a link")
    assert str(early.value) == str(late.value)


# --- 4. a long value is shortened in the message, kept whole on the error -----------------------------
def test_config_error_shortens_a_long_value():
    from charstudio.config import GenerationConfig

    value = [("a", 1.0)] * 241
    with pytest.raises(ConfigError) as err:
        GenerationConfig(prompt="x", loras=value)
    text = str(err.value)
    assert len(text) < 300 and "…" in text and f"({len(repr(value))} characters)" in text
    assert text.startswith("loras=[('a', 1.0)") and text.endswith("mapping of adapter name to weight")
    assert err.value.value == value
    assert str(ConfigError("steps", 0, "at least 1")) == "steps=0 is not valid: at least 1"
