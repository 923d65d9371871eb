"""LoRA training reports identity: the validation pictures' identity score against the training
pictures, with the LoRA and at weight 0, in identity.json and on each validation step's record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from charstudio.errors import ConfigError
from charstudio.identity import get_scorer
from charstudio.training import LoraTrainingConfig, train_lora

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(folder: Path) -> Path:
    from charstudio.mini.world import SCARF_CHARACTER, write_lora_dataset

    if not folder.exists():
        write_lora_dataset(folder, trigger="zorbi", attrs=SCARF_CHARACTER, count=4, size=64)
    return folder


def _config(tmp_path: Path, model: str, **overrides) -> LoraTrainingConfig:
    settings = dict(model=model, data_dir=str(_data(tmp_path / "data")), name="zorbi",
                    output_dir=str(tmp_path / "lora"), max_train_steps=4, rank=4, alpha=4.0, learning_rate=5e-2,
                    batch_size=2, validation_steps=2, num_validation_images=2, validation_inference_steps=2,
                    checkpointing_steps=2, resolution=64, identity_scorer="mini")
    settings.update(overrides)
    return LoraTrainingConfig(**settings)


def _score(scorer, images: list, reference: list) -> float:
    return float(np.mean(1.0 - scorer.difference(scorer.embed(images), scorer.embed(reference))))


def _pictures(paths) -> list:
    return [Image.open(p).convert("RGB") for p in sorted(paths)]


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_validation_points_score_the_lora_and_weight_zero_against_the_training_pictures(tmp_path, model):
    cfg = _config(tmp_path, model)
    records = list(train_lora(cfg))
    out = tmp_path / "lora" / "zorbi"
    report = json.loads((out / "identity.json").read_text())
    assert report["scorer"] == "mini" and report["training_pictures"] == 4
    assert [p["step"] for p in report["points"]] == [2, 4]
    assert [r.identity is not None for r in records] == [False, True, False, True]
    assert records[1].identity["scorer"] == "mini" and records[1].identity["threshold"] == pytest.approx(
        get_scorer("mini").min_score, abs=1e-6)

    # The numbers are what the files say: each point's pictures against the training pictures.
    scorer = get_scorer("mini")
    training = _pictures((tmp_path / "data").glob("*.png"))
    base = _pictures((out / "validation").glob("base_*.png"))
    assert len(base) == 2
    for point in report["points"]:
        trained = _pictures((out / "validation").glob(f"step{point['step']:06d}_*.png"))
        assert point["trained"] == pytest.approx(_score(scorer, trained, training), abs=1e-4)
        assert point["base"] == pytest.approx(_score(scorer, base, training), abs=1e-4)
        assert point["change"] == pytest.approx(point["trained"] - point["base"], abs=1e-5)
    # Weight 0 is the base model: switching the adapter off changed the pictures, and it came back on.
    last = _pictures((out / "validation").glob("step000004_*.png"))
    assert any(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() > 1 for a, b in zip(base, last))


def test_weight_zero_pictures_are_the_base_models(tmp_path):
    """The base pictures do not depend on training (those of a run whose adapter barely moved,
    at learning rate 1e-12, equal those of a trained one), and without training there is no change."""
    frozen = list(train_lora(_config(tmp_path / "a", "tiny", learning_rate=1e-12, max_train_steps=2)))
    trained = list(train_lora(_config(tmp_path / "b", "tiny", max_train_steps=2)))
    assert frozen[-1].identity["change"] == pytest.approx(0.0, abs=1e-4)
    assert abs(trained[-1].identity["change"]) > 1e-3
    assert trained[-1].identity["base"] == pytest.approx(frozen[-1].identity["base"], abs=1e-6)
    a = _pictures((tmp_path / "a" / "lora" / "zorbi" / "validation").glob("base_*.png"))
    b = _pictures((tmp_path / "b" / "lora" / "zorbi" / "validation").glob("base_*.png"))
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_identity_off_writes_nothing_and_bad_settings_are_refused(tmp_path):
    records = list(train_lora(_config(tmp_path, "tiny", identity_scorer="off", max_train_steps=2)))
    out = tmp_path / "lora" / "zorbi"
    assert not (out / "identity.json").exists() and all(r.identity is None for r in records)
    assert not list((out / "validation").glob("base_*"))
    with pytest.raises(ConfigError, match="identity_scorer"):
        _config(tmp_path / "x", "tiny", identity_scorer="")
    with pytest.raises(ConfigError, match="scorer"):
        list(train_lora(_config(tmp_path / "y", "tiny", identity_scorer="nonsense")))


def test_a_resumed_run_keeps_the_points_it_measured(tmp_path):
    cfg = _config(tmp_path, "tiny", max_train_steps=4)
    for record in train_lora(cfg):
        if record.step == 2:
            break  # stopped after the first validation point and checkpoint
    out = tmp_path / "lora" / "zorbi"
    assert [p["step"] for p in json.loads((out / "identity.json").read_text())["points"]] == [2]
    list(train_lora(_config(tmp_path, "tiny", max_train_steps=4, resume=True)))
    points = json.loads((out / "identity.json").read_text())["points"]
    assert [p["step"] for p in points] == [2, 4]
    assert points[0]["base"] == points[1]["base"]


def test_the_cli_prints_each_validation_points_identity(tmp_path, capsys):
    from charstudio.cli import main

    data = _data(tmp_path / "data")
    assert main(["train-lora", str(data), "--name", "zorbi", "--model", "tiny", "--resolution", "64", "--steps", "2",
                 "--rank", "4", "--batch-size", "2", "--validation-steps", "2", "--validation-images", "1",
                 "--identity-scorer", "mini", "--output-dir", str(tmp_path / "lora")]) == 0
    out = capsys.readouterr().out
    point = json.loads((tmp_path / "lora" / "zorbi" / "identity.json").read_text())["points"][0]
    line = next(x for x in out.splitlines() if x.startswith("identity at step 2:"))
    assert f"{point['trained']:.3f} with the LoRA, {point['base']:.3f} at weight 0" in line and "(mini;" in line
    assert main(["train-lora", str(data), "--name", "other", "--model", "tiny", "--identity-scorer", "off",
                 "--steps", "1", "--validation-images", "1", "--resolution", "64",
                 "--output-dir", str(tmp_path / "lora")]) == 0
    assert "identity at step" not in capsys.readouterr().out
