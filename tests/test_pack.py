"""Outfit x expression packs (charstudio.cast.pack, `charstudio pack`): every sprite drawn from one
seed, scored, re-rolled when asked, saved as a folder a game engine reads, re-drawn from it; and
the same files from two processes as from one (charstudio.sheets.distributed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charstudio.cast.pack import make_pack, redraw_sprite, resolve_outfits, resolve_pack_expressions
from charstudio.character import load_character
from charstudio.errors import ConfigError, OutputError
from helpers import pixels as px

FAST = dict(num_inference_steps=3)
ROOT = Path(__file__).resolve().parents[1]


def test_outfits_and_expressions_come_from_the_card():
    rin = load_character("rin")
    assert [o for o, _ in resolve_outfits(rin, "all")] == list(rin.wardrobe)
    assert dict(resolve_outfits(rin, "school")) == {"school": "a white shirt and trousers"}
    assert dict(resolve_pack_expressions(rin, ["smiling", "winking"])) == {"smiling": "smiling, happy",
                                                                          "winking": "winking"}
    with pytest.raises(ConfigError, match="'gala'.*default, school, casual"):
        resolve_outfits(rin, "default,gala")
    # A card without a wardrobe wears its own outfit traits, as "default"; its expressions are the defaults.
    aiko = load_character("aiko")
    assert not aiko.wardrobe
    (name, words), = resolve_outfits(aiko)
    assert name == "default" and words and words in aiko.subject
    assert [e for e, _ in resolve_pack_expressions(aiko)][:2] == ["neutral", "smiling"]


def test_pack_draws_every_outfit_x_expression_from_one_seed_scores_saves_and_redraws(mini_studio, one_thread,
                                                                                      tmp_path):
    out = tmp_path / "rin"
    pack = make_pack(mini_studio, "rin", ["default", "school"], ["neutral", "smiling"], seed=11, max_tries=1,
                     out=out, **FAST)
    # Every outfit x expression, row by row, all from the same seed.
    assert pack.labels == ["default / neutral", "default / smiling", "school / neutral", "school / smiling"]
    assert [r.seed for r in pack.recipes] == [11] * 4
    prompts = [r.prompt for r in pack.recipes]
    assert all("a blue dress" in p and "a white shirt" not in p for p in prompts[:2])
    assert all("a white shirt and trousers" in p and "a blue dress" not in p and "a hat" not in p
               for p in prompts[2:])
    assert "smiling, happy" in prompts[1] and "closed mouth" in prompts[0]
    assert len({px(im).tobytes() for im in pack.images}) == 4  # the words change the pictures
    # A score on every picture, each against its outfit's first sprite (which scores 1 against itself).
    report = pack.identity
    assert report is not None and report.scorer == "mini" and len(report.scores) == 4
    assert report.scores[0] == report.scores[2] == 1.0
    assert pack.identity_record.anchors == [0, 2]  # the grid says 'anchor' under each outfit's first
    assert all(-1 <= s < 1 for s in (report.scores[1], report.scores[3]))

    # The folder: one PNG per sprite, the grid and index.json; nothing silently overwritten.
    index = json.loads((out / "index.json").read_text())
    names = ["rin_default_neutral", "rin_default_smiling", "rin_school_neutral", "rin_school_smiling"]
    assert [s["name"] for s in index["sprites"]] == names
    assert sorted(p.name for p in out.iterdir()) == sorted([*(n + ".png" for n in names), "grid.png", "index.json"])
    from PIL import Image

    from charstudio.metadata import read_recipe

    for i, sprite in enumerate(index["sprites"]):
        saved = Image.open(out / sprite["file"])
        assert (px(saved) == px(pack.images[i])).all()
        assert (sprite["width"], sprite["height"], sprite["seed"]) == (64, 64, 11)
        assert sprite["identity"] == report.scores[i] and sprite["anchor"] == names[i - i % 2]
        assert sprite["recipe"] == pack.recipes[i].to_dict() == read_recipe(out / sprite["file"])[1].to_dict()
        assert (sprite["outfit"], sprite["expression"]) == tuple(pack.labels[i].split(" / "))
    assert index["settings"]["reference"] == "rin_default_neutral"  # no reference picture on the card
    grid = Image.open(out / "grid.png")
    assert grid.width > 2 * 64 and grid.width < 3 * 64 and grid.height > 2 * 64  # 2 columns: the expressions
    with pytest.raises(OutputError, match="already exists"):
        pack.save(out)

    # Re-running a sprite's recipe, with the pack's reference attention, gives the sprite back.
    again = redraw_sprite(mini_studio, out, "rin_school_smiling")
    assert np.abs(px(again) - px(pack.images[3])).max() <= 1
    assert (px(redraw_sprite(mini_studio, out, "rin_default_neutral")) == px(pack.images[0])).all()


def test_a_sprite_below_the_bar_is_rerolled_and_every_try_recorded(mini_studio, one_thread):
    pack = make_pack(mini_studio, "rin", "casual", ["neutral", "surprised"], seed=5, min_identity=1.0, max_tries=3,
                     **FAST)
    tries = pack.identity_record.tries
    assert [t["seed"] for t in tries[0]] == [5]  # the row's anchor is never re-rolled
    assert [t["seed"] for t in tries[1]] == [5, 6, 7]  # an impossible bar: every try taken
    assert pack.never_reached == ["casual / surprised"]
    assert "1 of 1 view(s) never reached" in pack.identity_note
    kept = [t for t in tries[1] if t["kept"]]
    assert len(kept) == 1 and kept[0]["score"] == max(t["score"] for t in tries[1]) == pack.identity.scores[1]
    assert pack.recipes[1].seed == kept[0]["seed"]
    summary = pack.summary(["a.png", "b.png"])
    assert summary["sprites"][1]["tries"] == 3 and summary["sprites"][1]["passed"] is False


def test_cli_pack_prints_scores_and_refuses_a_typo_before_loading(tmp_path, capsys, one_thread):
    from charstudio.cli import main

    out = tmp_path / "pack"
    assert main(["pack", "rin", "--outfits", "gala", "--out", str(out)]) == 2
    assert "--outfits='gala'" in capsys.readouterr().err and not out.exists()
    assert main(["pack", "rin", "--outfits", "school", "--expressions", "neutral,smiling", "--steps", "2",
                 "--seed", "3", "--max-tries", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rin_school_smiling.png" in printed and "school / smiling" in printed
    assert "identity against each outfit's first sprite (mini" in printed
    assert main(["pack", "rin", "--outfits", "school", "--expressions", "neutral", "--out", str(out)]) == 2
    assert "already holds a pack" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_write_the_same_pack_as_one(mini_studio, tmp_path):
    """`accelerate launch` with 2 CPU processes splits the sprites and gathers them: the same files,
    byte for byte, as one process. One thread everywhere (CPU kernels sum in a thread-count
    dependent order). No --seed: rin's card seed. --max-batch 2: after the anchor (drawn by both),
    one process draws sprites 1-2, the other sprite 3, the batches one process draws."""
    script = tmp_path / "cli.py"
    script.write_text("import sys\nfrom charstudio.cli import main\nsys.exit(main())\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    args = ["pack", "rin", "--outfits", "default,school", "--expressions", "neutral,smiling", "--steps", "2",
            "--max-tries", "2", "--min-identity", "0.99", "--max-batch", "2", "--device", "cpu"]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
                          *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    names = sorted(p.name for p in one_dir.iterdir())
    assert names == sorted(p.name for p in two_dir.iterdir()) and "index.json" in names and len(names) == 6
    for name in names:
        assert (one_dir / name).read_bytes() == (two_dir / name).read_bytes(), name
    index = json.loads((one_dir / "index.json").read_text())
    assert {s["seed"] for s in index["sprites"]} >= {7}  # the card's seed, shared by both processes
    assert "processes" not in index["settings"]
    assert any(s["tries"] == 2 for s in index["sprites"])  # a re-roll round was split and gathered too


def test_share_deals_whole_batches_round_robin():
    from types import SimpleNamespace

    from charstudio.sheets.distributed import draw_split, share

    ranks = [SimpleNamespace(process_index=r, num_processes=2) for r in (0, 1)]
    assert share(range(5), None, chunk=2) == [0, 1, 2, 3, 4]
    assert [share(range(1, 6), r, chunk=2) for r in ranks] == [[1, 2, 5], [3, 4]]
    assert [share(range(3), r) for r in ranks] == [[0, 2], [1]]
    assert draw_split(3, lambda mine: {i: i * i for i in mine}, None) == {0: 0, 1: 1, 2: 4}
