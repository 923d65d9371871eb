"""`charstudio verify` (issue #39): a picture from another tool says "no watermark, no manifest" and
exits 1; a signed charstudio picture exits 0 and names its action, model and signer; --json; --rerun
reproduces a tiny picture, and a picture whose pixels were changed is found out; a missing file is
one line and exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("c2pa")

from charstudio.cli import main  # noqa: E402


@pytest.fixture
def cert(c2pa_cert):
    return c2pa_cert


@pytest.fixture
def drawn(signing, tiny_studio, tmp_path):
    """A tiny picture saved the usual way (signed with the test certificate)."""
    result = tiny_studio.generate("a red fox", seed=5, num_inference_steps=2, width=64, height=64)
    (path,) = result.save(tmp_path)
    return path


def test_a_plain_picture_has_no_watermark_no_manifest_and_exits_1(tmp_path, capsys):
    path = tmp_path / "other.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "no watermark, no manifest" in out and "recipe: none" in out


def test_a_bmp_from_another_tool_has_no_manifest_rather_than_a_broken_one(tmp_path, capsys):
    path = tmp_path / "other.bmp"
    Image.new("RGB", (64, 64), (30, 60, 90)).save(path)
    assert main(["verify", "--json", str(path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["manifest"]["present"] is False and "cannot read this format" in report["manifest"]["error"]


def test_a_signed_charstudio_picture_exits_0_and_says_what_its_manifest_holds(drawn, signing, tmp_path, capsys):
    assert main(["verify", str(drawn)]) == 0
    out = capsys.readouterr().out
    assert "manifest: c2pa.created (signature valid, signer not in a trust list)" in out
    assert "model: tiny" in out and "signed by: charstudio test signer" in out and "'a red fox'" in out
    assert main(["verify", "--json", "--trust", str(signing.root), str(drawn)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["manifest"]["trusted"] and report["manifest"]["actions"] == ["c2pa.created"]
    assert report["recipe"]["prompt"] == "a red fox"


def test_one_picture_without_provenance_makes_the_whole_call_exit_1(drawn, tmp_path, capsys):
    other = tmp_path / "other.png"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(other)
    assert main(["verify", str(drawn), str(other)]) == 1
    out = capsys.readouterr().out
    assert str(drawn) in out and str(other) in out and out.count("no watermark, no manifest") == 1


def test_rerun_reproduces_the_picture_and_finds_changed_pixels(drawn, tmp_path, capsys):
    assert main(["verify", "--rerun", str(drawn)]) == 0
    assert "rerun: reproduced (max difference 0 levels" in capsys.readouterr().out
    # The same recipe text over other pixels (re-saved by PIL: the manifest goes, the text stays).
    with Image.open(drawn) as im:
        text = dict(im.text)
        pixels = np.asarray(im.convert("RGB")).copy()
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    pixels[:16, :16] = 255 - pixels[:16, :16]
    changed = tmp_path / "changed.png"
    Image.fromarray(pixels).save(changed, pnginfo=info)
    assert main(["verify", "--rerun", str(changed)]) == 1
    assert "rerun: NOT reproduced" in capsys.readouterr().out


def test_a_missing_picture_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nope.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.png" in err and "no such file" in err
