"""Storyboards (#37 item 5): scripts checked panel by panel, panels drawn (two characters as regions),
each character scored against its card's anchor on its own region and re-rolled below the bar, a page
(PNG + PDF) and storyboard.json written whole, one panel re-drawn or re-lettered; the CLI; and the
measured 6-panel script on mini."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from charstudio.errors import ConfigError, OutputError
from charstudio.identity import Scorer
from charstudio.storyboard import draw_storyboard, load_script, redraw_panel
from charstudio.storyboard.panels import panel_config, load_cast

FAST = dict(steps=2)
BAR = 0.8


def digest(image) -> str:
    return hashlib.sha1(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


class RegionScorer(Scorer):
    """Scores a crop by what the spy on `Studio.run` learnt about it: (the picture's seed, which region
    of it: whole, left or right) looked up in ``table`` (missing: 0.95; an anchor: 1.0). Embeddings are
    unit vectors at angle arccos(score) from the anchor's, so 1 - cosine gives the score back. It also
    records the size of every crop it is shown."""

    name = "regional"
    threshold = 1.0 - BAR

    def __init__(self, table):
        self.table, self.known, self.sizes = table, {}, []

    def learn(self, image, seed, anchor):
        w, h = image.size
        self.known[digest(image)] = ("anchor", seed) if anchor else ("whole", seed)
        if not anchor and w > h:
            self.known[digest(image.crop((0, 0, w // 2, h)))] = ("left", seed)
            self.known[digest(image.crop((w // 2, 0, w, h)))] = ("right", seed)

    def embed(self, images):
        rows = []
        for im in images:
            self.sizes.append(im.size)
            where, seed = self.known[digest(im)]
            s = 1.0 if where == "anchor" else self.table.get((where, seed), 0.95)
            rows.append([s, float(np.sqrt(max(0.0, 1.0 - s * s)))])
        return np.asarray(rows, dtype=np.float32)


@pytest.fixture
def spied(tiny_studio, monkeypatch):
    calls = []
    real = tiny_studio.run

    def run(config, **kwargs):
        res = real(config, **kwargs)
        calls.append(config)
        scorer.learn(res.images[0], config.seed, anchor=config.prompt in anchors)  # a card as it is: an anchor
        return res

    from charstudio.character import compose_prompt, load_character

    anchors = {compose_prompt(load_character(n))[0] for n in ("rin", "kai")}
    scorer = RegionScorer({})
    monkeypatch.setattr(tiny_studio, "run", run)
    monkeypatch.setattr(tiny_studio, "default_size", 64)  # small pictures: the test is about the bookkeeping
    return tiny_studio, scorer, calls


SCRIPT = {
    "title": "Test", "seed": 100, "setting": "light green background",
    "panels": [
        {"characters": ["@rin"], "pose": "waving", "caption": "Rin waits.", "line": "Kai!"},
        {"characters": ["@rin", {"name": "@kai", "expression": "smiling"}], "pose": ["standing_front", "waving"],
         "shot": "close-up", "caption": "Together."},
    ],
}


# -- the script -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script, field, fragment", [
    ({"panels": []}, "panels", "one or more panels"),
    ({"panels": [{"characters": ["@rin"], "shot": "wide"}]}, "panels[0].shot", "full, medium, close-up"),
    ({"panels": [{"characters": ["@rin"]}, {"characters": ["@rin", "@kai", "@aiko"]}]}, "panels[1].characters",
     "one or 2 characters"),
    ({"panels": [{"characters": ["@rin", "@rin"]}]}, "panels[0].characters", "one card appears twice"),
    ({"panels": [{"characters": ["@rin"], "lines": "hi"}]}, "panels[0].lines", "a panel field among"),
    ({"panels": [{"characters": [{"name": "@rin", "mood": "sad"}]}]}, "panels[0].characters[0].mood", "name, outfit"),
    ({"panels": [{"characters": ["@rin", "@kai"], "pose": ["waving"]}]}, "panels[0].pose", "a list of 2 poses"),
    ({"panels": [{"characters": ["@rin"], "caption": "x" * 400}]}, "panels[0].caption", "at most 300"),
])
def test_a_bad_script_is_refused_naming_the_panel_and_the_field(script, field, fragment):
    with pytest.raises(ConfigError) as err:
        load_script(script)
    assert err.value.field == field and fragment in str(err.value)


@pytest.mark.parametrize("panel, field, fragment", [
    ({"characters": ["@nobody"]}, "panels[1].characters[0]", "no such card"),
    ({"characters": ["@rin:pyjamas"]}, "panels[1].characters[0].outfit", "no such outfit"),
    ({"characters": ["@kai", {"name": "@rin", "expression": "sleepy"}]}, "panels[1].characters[1].expression",
     "no such expression"),
    ({"characters": ["@rin", "@kai"], "pose": "waving"}, "panels[1].pose", "a pose of 2 people"),
    ({"characters": ["@rin"], "pose": "no_such_pose"}, "panels[1].pose", "no_such_pose"),
])
def test_cards_outfits_and_poses_are_checked_before_any_drawing(tiny_studio, tmp_path, panel, field, fragment,
                                                                monkeypatch):
    monkeypatch.setattr(tiny_studio, "run", lambda *a, **k: pytest.fail("drew before the script was checked"))
    script = {"panels": [{"characters": ["@kai"]}, panel]}
    with pytest.raises(ConfigError) as err:
        draw_storyboard(tiny_studio, script, out=tmp_path / "b", scorer="none")
    assert err.value.field == field and fragment in str(err.value)
    assert not (tmp_path / "b").exists()


def test_the_shipped_example_is_six_panels_of_rin_and_kai():
    from charstudio.character import prompt_dirs

    path = next(d / "storyboards" / "example.yaml" for d in prompt_dirs() if (d / "storyboards" / "example.yaml").is_file())
    script = load_script(path)
    assert len(script.panels) == 6 and script.cast == ["rin", "kai"]
    assert {p.shot for p in script.panels} == {"full", "medium", "close-up"}
    assert any(len(p.characters) == 2 for p in script.panels)


# -- panels -------------------------------------------------------------------------------------------------
def test_a_two_character_panel_is_two_regions_with_each_cards_words_and_the_setting(tiny_studio):
    script = load_script(SCRIPT)
    cards = load_cast(script)
    config, chars, crop = panel_config(tiny_studio, script, 1, cards, seed=5, steps=2, settings={})
    w, h = config.width, config.height
    assert w == 2 * h and [r["box"] for r in config.regions] == ["left", "right"]
    left, right = (r["prompt"] for r in config.regions)
    assert "long red hair" in left and "spiky blue hair" in right and "red" not in right
    assert "smiling, happy" in right and "smiling" not in left  # kai's expression, in kai's region only
    # The setting replaces the cards' own background trait (rin: yellow, kai: light blue).
    assert "light green background" in left and "yellow" not in left and "light blue" not in right
    assert len(config.pose["people"]) == 2
    assert [c["box"] for c in chars] == [[0, 0, w // 2, h], [w // 2, 0, w, h]]
    # A small model draws the whole figures: the close-up is the page's crop, no words in the prompt.
    assert crop is not None and "close-up" not in config.prompt and crop[3] < h


def test_on_a_big_model_the_shot_crops_the_pose_and_names_the_framing(tiny_studio, monkeypatch):
    monkeypatch.setattr(tiny_studio, "default_size", 512)
    script = load_script({"panels": [{"characters": ["@rin"], "pose": "standing_front", "shot": "medium"}]})
    config, _, crop = panel_config(tiny_studio, script, 0, load_cast(script), seed=1, steps=2, settings={})
    full, _, _ = panel_config(tiny_studio, load_script({"panels": [{"characters": ["@rin"]}]}), 0,
                              load_cast(script), seed=1, steps=2, settings={})
    assert crop is None and "upper body" in config.prompt and "upper body" not in full.prompt

    from charstudio.pose import Pose

    def head(pose):  # the neck-to-nose distance in pixels of the picture
        body = Pose.from_dict(pose).body
        return float(np.linalg.norm(body[0, :2] - body[1, :2]))

    assert head(config.pose) > 1.5 * head(full.pose)  # the upper body fills the picture: a bigger head
    assert "upper body" not in config.regions[0]["prompt"] if config.regions else True


# -- drawing, re-rolls, files ---------------------------------------------------------------------------------
def test_characters_are_scored_on_their_regions_and_rerolled_below_the_bar(spied, tmp_path):
    """Panel 2's kai (right half) scores 0.5 at its first seed and 0.9 at the next: the panel is drawn
    twice, the second kept; rin (left) is scored on her half only. Everything lands in storyboard.json."""
    studio, scorer, calls = spied
    scorer.table[("right", 116)] = 0.5
    board = draw_storyboard(studio, SCRIPT, out=tmp_path / "b", scorer=scorer, min_identity="auto", max_tries=3,
                            **FAST)
    assert board.tries == [1, 2]
    assert [c.seed for c in calls if c.regions] == [116, 117]
    panel = board.panels[1]
    assert panel.recipe.seed == 117 and panel.passed
    assert [t["scores"]["kai"] for t in panel.tries] == [pytest.approx(0.5), pytest.approx(0.95)]
    assert [t["kept"] for t in panel.tries] == [False, True]
    w, h = panel.recipe.width, panel.recipe.height
    assert (w // 2, h) in scorer.sizes and (w, h) not in scorer.sizes  # halves, never the two-person picture
    data = json.loads((tmp_path / "b" / "storyboard.json").read_text())
    assert data["settings"]["min_identity"] == pytest.approx(BAR) and data["tries"] == [1, 2]
    assert data["panels"][1]["recipe"]["seed"] == 117 and data["panels"][1]["characters"][1]["score"] == pytest.approx(0.95)
    assert {"page.png", "page.pdf", "panel-01.png", "panel-02.png", "anchor-rin.png", "anchor-kai.png",
            "script.yaml"} <= set(data["files"])
    assert (tmp_path / "b" / "page.pdf").read_bytes().startswith(b"%PDF")
    page = Image.open(tmp_path / "b" / "page.png")
    assert page.width > 2 * 192 and page.height > 192
    # The panel's PNG re-runs from its recipe alone (no card needed).
    from charstudio.recipe.metadata import read_recipe

    _, recipe = read_recipe(tmp_path / "b" / "panel-02.png")
    assert recipe.seed == 117 and recipe.regions == panel.recipe.regions


def test_a_panel_that_never_reaches_the_bar_keeps_its_best_try_and_is_named(spied, tmp_path, caplog):
    studio, scorer, calls = spied
    scorer.table.update({("whole", 100): 0.6, ("whole", 101): 0.7, ("whole", 102): 0.65})
    board = draw_storyboard(studio, {"seed": 100, "setting": "grey background", "panels": SCRIPT["panels"][:1]}, scorer=scorer,
                            min_identity=BAR, max_tries=3, **FAST)
    assert board.tries == [3] and board.panels[0].recipe.seed == 101 and not board.panels[0].passed
    assert board.never_reached == [1] and "panel 1: rin 0.700" in board.note
    assert "never reached" in caplog.text


def test_an_existing_storyboard_is_not_replaced_without_overwrite(spied, tmp_path):
    studio, scorer, calls = spied
    one = {"seed": 100, "setting": "grey background", "panels": SCRIPT["panels"][:1]}
    draw_storyboard(studio, one, out=tmp_path / "b", scorer=scorer, **FAST)
    before = len(calls)
    with pytest.raises(OutputError, match="already holds a storyboard"):
        draw_storyboard(studio, one, out=tmp_path / "b", scorer=scorer, **FAST)
    assert len(calls) == before  # refused before drawing
    draw_storyboard(studio, one, out=tmp_path / "b", scorer=scorer, overwrite=True, **FAST)


def test_redraw_panel_relines_without_drawing_or_redraws_at_a_new_seed(spied, tmp_path):
    studio, scorer, calls = spied
    draw_storyboard(studio, SCRIPT, out=tmp_path / "b", scorer=scorer, **FAST)
    panel_png = (tmp_path / "b" / "panel-02.png").read_bytes()
    page = (tmp_path / "b" / "page.png").read_bytes()
    before = len(calls)
    # 1. A new line only: nothing is drawn; the line is in the script and the page changes.
    board = redraw_panel(studio, tmp_path / "b", 2, line="Race you!", scorer=scorer)
    assert len(calls) == before
    assert (tmp_path / "b" / "panel-02.png").read_bytes() == panel_png
    assert (tmp_path / "b" / "page.png").read_bytes() != page
    assert json.loads((tmp_path / "b" / "storyboard.json").read_text())["script"]["panels"][1]["line"] == "Race you!"
    assert "Race you!" in (tmp_path / "b" / "script.yaml").read_text()
    # 2. A redraw: the seed after the last try, from the recorded recipe, scored against the saved anchors.
    board = redraw_panel(studio, tmp_path / "b", 2, scorer=scorer)
    assert [c.seed for c in calls[before:]] == [117]
    assert board.panels[1].recipe.seed == 117 and board.panels[1].recipe.regions == board.panels[1].recipe.regions
    assert json.loads((tmp_path / "b" / "storyboard.json").read_text())["panels"][1]["recipe"]["seed"] == 117
    assert (tmp_path / "b" / "panel-02.png").read_bytes() != panel_png
    with pytest.raises(ConfigError, match="from 1 to 2"):
        redraw_panel(studio, tmp_path / "b", 3, scorer=scorer)


# -- the command line ------------------------------------------------------------------------------------------
def test_cli_draws_a_script_then_reletters_one_panel(tmp_path, capsys):
    from charstudio.cli import main

    script = tmp_path / "s.yaml"
    script.write_text("seed: 3\npanels:\n  - characters: ['@rin']\n    caption: One.\n    line: Hi!\n")
    out = tmp_path / "board"
    common = ["--model", "tiny", "--device", "cpu", "--steps", "1", "--scorer", "none"]
    assert main(["storyboard", str(script), "--out", str(out), *common]) == 0
    printed = capsys.readouterr().out
    assert str(out / "page.png") in printed and "panel 1: rin (1 try)" in printed
    assert main(["storyboard", str(script), "--out", str(out), *common]) == 2  # no silent overwrite
    assert "already holds a storyboard" in capsys.readouterr().err
    panel = (out / "panel-01.png").read_bytes()
    assert main(["storyboard", str(out), "--panel", "1", "--line", "Bye!", *common]) == 0
    assert (out / "panel-01.png").read_bytes() == panel  # a new line re-letters; nothing is drawn
    assert json.loads((out / "storyboard.json").read_text())["script"]["panels"][0]["line"] == "Bye!"
    assert main(["storyboard", str(script), "--line", "x", "--out", str(tmp_path / "b2"), *common]) == 2
    assert "--line" in capsys.readouterr().err


# -- several processes ---------------------------------------------------------------------------------------
def test_accelerate_two_processes_draw_the_same_storyboard_as_one(tmp_path):
    """`accelerate launch` with 2 CPU processes: the panels split over them (panel i to process i mod 2),
    each re-rolls its own, and the first process writes the folder: the same seeds, tries, scores and
    pictures as one process (both with one thread: CPU kernels sum in a thread-count dependent order)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from helpers import pixels

    script = tmp_path / "s.yaml"
    script.write_text("seed: 5\nsetting: grey background\npanels:\n  - characters: ['@rin']\n"
                      "  - characters: ['@rin', '@kai']\n  - characters: ['@kai']\n    pose: waving\n")
    cli = tmp_path / "cli.py"
    cli.write_text("import sys\nfrom charstudio.cli import main\nsys.exit(main())\n")
    args = ["storyboard", str(script), "--model", "tiny", "--device", "cpu", "--steps", "1", "--scorer", "mini",
            "--max-tries", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(cli)]
    two = subprocess.run([*launch, *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(cli), *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "storyboard.json").read_text()) for d in ("one", "two"))
    assert (a["settings"]["processes"], b["settings"]["processes"]) == (1, 2)
    assert a["tries"] == b["tries"]
    for pa, pb in zip(a["panels"], b["panels"]):
        assert [t["seed"] for t in pa["tries"]] == [t["seed"] for t in pb["tries"]]
        assert pa["recipe"]["seed"] == pb["recipe"]["seed"]
        assert np.abs(pixels(Image.open(tmp_path / "one" / pa["file"])) - pixels(Image.open(tmp_path / "two" / pb["file"]))).max() <= 1


# -- measured on mini (#37: "every panel's characters score at or above the identity threshold") ---------------
def test_the_example_script_on_mini_every_character_reaches_the_threshold_with_rerolls(mini_studio, tmp_path):
    """The shipped six-panel script (rin and kai, two panels with both) on mini, mini's scorer,
    min_identity="auto", at most 4 tries a panel: every character of every panel ends at or above the
    scorer's threshold against its card's anchor. The tries are recorded (README: 1, 1, 2, 1, 1, 1)."""
    from charstudio.character import prompt_dirs
    from charstudio.identity import get_scorer

    example = next(d / "storyboards" / "example.yaml" for d in prompt_dirs()
                   if (d / "storyboards" / "example.yaml").is_file())
    board = draw_storyboard(mini_studio, example, out=tmp_path / "b", scorer="mini", min_identity="auto", max_tries=4)
    bar = board.settings["min_identity"]
    assert bar == pytest.approx(get_scorer("mini").min_score, abs=1e-6)
    scores = [c["score"] for p in board.panels for c in p.characters]
    assert len(board.panels) == 6 and len(scores) == 8
    assert board.never_reached == [] and all(s >= bar for s in scores), (board.tries, scores)
    assert all(1 <= t <= 4 for t in board.tries)
    saved = json.loads((tmp_path / "b" / "storyboard.json").read_text())
    assert saved["tries"] == board.tries and saved["settings"]["scorer"] == "mini"
