"""Checks that must come before the model loads: a bad --embedder folder (the sheet commands)
and a --strength too low for one denoising step (detail, inpaint). Each command is given a model
that does not exist (sd99): an answer naming the flag, and not the model, was given before any
model was loaded, let alone any picture drawn."""

from __future__ import annotations

import pytest

from charstudio.cli import main

SHEETS = [
    ["sheet", "aiko", "--poses", "standing_front"],
    ["turnaround", "aiko"],
    ["expressions", "aiko"],
]


@pytest.mark.parametrize("command", SHEETS, ids=lambda c: c[0])
@pytest.mark.parametrize("problem", ["missing", "file", "no_config"])
def test_a_bad_embedder_folder_is_refused_before_the_model_loads(command, problem, tmp_path, capsys):
    embedder = tmp_path / "clip"
    if problem == "file":
        embedder.write_text("not a model")
    elif problem == "no_config":
        embedder.mkdir()
        (embedder / "model.safetensors").write_bytes(b"")
    out = tmp_path / "sheet"
    assert main([*command, "--embedder", str(embedder), "--model", "sd99", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"embedder={str(embedder)!r}" in err and "sd99" not in err, err
    expected = {"missing": "no such folder", "file": "is a file", "no_config": "no config.json"}[problem]
    assert expected in err
    assert not out.exists()


@pytest.fixture
def picture(tmp_path):
    from PIL import Image

    path = tmp_path / "picture.png"
    Image.new("RGB", (64, 64), (200, 120, 80)).save(path)
    return path


@pytest.mark.parametrize("command", [["detail", "--prompt", "a girl"], ["inpaint", "--mask", "0,0,32,32"]],
                         ids=lambda c: c[0])
def test_a_strength_below_one_step_is_refused_before_the_model_loads(command, picture, tmp_path, capsys):
    name, *flags = command
    out = tmp_path / "out"
    assert main([name, str(picture), *flags, "--strength", "0.0005", "--model", "sd99", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--strength=0.0005" in err and "at least 0.001" in err and "sd99" not in err, err
    assert not out.exists()
    # The floor itself passes the check: the answer is now about the model.
    assert main([name, str(picture), *flags, "--strength", "0.001", "--model", "sd99", "--out", str(out)]) == 2
    assert "sd99" in capsys.readouterr().err
