"""The built-in `mini` model draws what it is asked: the studio's behaviours, measured on pictures.

`mini` was trained by `charstudio.mini.train` on the procedural world of `charstudio.mini.world`,
where the truth of every picture is known. These tests generate through the ordinary Studio API and
score the pictures with `charstudio.mini.evaluate` (see the thresholds in issue 7).
"""

from __future__ import annotations

import json

import pytest

from charstudio.mini import evaluate as mini_eval
from charstudio.models.loading import packaged_model_dir, resolve_model

MINI = packaged_model_dir("mini")
pytestmark = pytest.mark.skipif(not (MINI / "model_index.json").is_file(), reason="mini weights not built")

@pytest.fixture(scope="module")
def mini():
    from charstudio import Studio

    return Studio.from_pretrained("mini", device="cpu")


def test_mini_is_a_small_diffusers_folder_loaded_like_any_checkpoint(mini):
    source = resolve_model("mini")
    assert source.kind == "folder" and source.location == str(MINI)  # the same path as a user's folder
    files = [p for p in MINI.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 30 * 2**20
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert mini.default_size == 64 and mini.controlnet_source == str(MINI / "controlnet")
    report = json.loads((MINI / "mini_report.json").read_text())
    # a fine-tuning stage skips the VAE phase: the VAE's loss curve is in the lineage it keeps
    assert (report["vae_loss"] or report["init"]["vae_loss"]) and report["unet_loss"] and "behaviour" in report


def test_text_sets_hair_colour(mini):
    score = mini_eval.hair_colour_accuracy(mini, seeds=range(10))
    assert all(rate >= 0.8 for rate in score["per_colour"].values()), score["seen"]


def test_pose_sets_the_figure(mini):
    score = mini_eval.pose_alignment(mini, seeds=range(8))
    assert score["iou"] >= 0.5, score
    assert score["margin"] >= 0.15, score


def test_sheet_keeps_outfit_and_hair_colours(mini):
    score = mini_eval.sheet_consistency(mini, mini_eval.loose_card(), mini_eval.SHEET_POSES, seed=3)
    assert score["distance_sheet"] <= 0.5 * score["distance_seeds"], score


def test_hue_path_counts_inversions_round_the_wheel_either_way():
    # red -> yellow -> green -> blue and red -> magenta -> blue are both steady morphs
    assert mini_eval.hue_inversions([0, 9, 20, 119, 163, 217, 225])[1] == 0
    assert mini_eval.hue_inversions([358, 5, 30, 139, 201, 220, 222])[1] == 0  # crosses 0 deg going up
    assert mini_eval.hue_inversions([2, 340, 300, 270, 240, 226])[1] == 0  # crosses 0 deg going down
    # back and forth is not
    assert mini_eval.hue_inversions([0, 40, 10, 60, 30, 120, 225])[1] == 2
    assert mini_eval.hue_inversions([0, 30, 0, 30, 0, 30, 0, 225])[1] == 3


def test_interpolation_moves_hair_hue_steadily(mini):
    score = mini_eval.hue_path(mini, frames=7)  # with the studio's even spacing, as notebook 03 offers
    assert score["uniform"]
    assert score["ends"] == ["red", "blue"], score  # it really goes from red hair to blue hair
    assert score["inversions"] <= 1, score["hues"]
    assert score["evenness"] >= 0.7, score


@pytest.mark.parametrize("feature", list(mini_eval.FEATURES))
def test_feature_check_sees_every_ground_truth_picture_and_not_the_plain_character(feature):
    from charstudio.mini.world import SCARF_CHARACTER, render

    check = mini_eval.FEATURES[feature]
    for seed in range(10):
        pose = mini_eval._feature_subject(seed, 64)[1]
        assert check.shown(render(SCARF_CHARACTER.replace(accessory=feature), pose, 64), pose)[0], seed
        assert not check.shown(render(SCARF_CHARACTER, pose, 64), pose)[0], seed


def test_the_vae_carries_the_lora_checks_feature(mini):
    ceiling = mini_eval.feature_ceiling(mini, mini_eval.LORA_FEATURE, seeds=range(10))
    assert ceiling["vae_rate"] == 1.0, ceiling["vae_fraction"]  # a LoRA can show it in every seed


@pytest.mark.slow
def test_lora_teaches_a_trigger_word_a_new_feature(mini, tmp_path):
    """8 pictures of the character wearing an accessory base training never drew, captioned with
    everything but the accessory: after <= 300 steps the trigger word alone brings it out.

    The orange striped scarf (the issue's first example) is measured in mini_report.json
    (`lora_scarf`), not here: mini's VAE carries it in only 30% of true pictures, so no LoRA can
    reach the target, and a test that cannot fail is no test.
    """
    from charstudio.training import LoraTrainingConfig
    from charstudio.mini.world import SCARF_CHARACTER, lora_prompt, write_lora_dataset

    feature = mini_eval.LORA_FEATURE

    def prompt(attrs):  # the trained character, in a random pose per seed
        return lora_prompt(SCARF_CHARACTER, "zorbi")

    data = tmp_path / "zorbi"
    write_lora_dataset(data, trigger="zorbi", count=8, size=mini.default_size, accessory=feature)
    cfg = LoraTrainingConfig(**mini_eval.LORA_SETTINGS, data_dir=str(data), name="zorbi",
                             output_dir=str(tmp_path / "lora"))
    assert cfg.max_train_steps <= 300
    seeds = mini_eval.LORA_SEEDS
    with mini_eval.one_thread():  # the same sums in the same order on any machine (see one_thread)
        before = mini_eval.feature_rate(mini, prompt, feature, seeds=seeds)
        assert before["rate"] <= 0.1, before
        records = list(mini.train_lora(cfg))
        assert records[-1].step == cfg.max_train_steps
        mini.load_lora(tmp_path / "lora" / "zorbi", weight=1.0)
        try:
            after = mini_eval.feature_rate(mini, prompt, feature, seeds=seeds)
        finally:
            mini.unload_loras()
    assert after["rate"] >= 0.7, after


def test_cli_defaults_to_mini_and_names_words_it_never_saw(tmp_path, capsys):
    from charstudio import Result
    from charstudio.cli import main

    assert main(["generate", "a knight with a katana and red hair", "--steps", "2", "--seed", "1",
                 "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    recipe = Result.from_png(captured.out.split()[0]).recipe
    assert recipe.model == "mini" and (recipe.width, recipe.height) == (64, 64)
    assert "katana, knight" in captured.err and "red" not in captured.err.split("never seen the words")[1].split(";")[0]


def test_encode_then_decode_gives_the_picture_back(mini):
    import numpy as np

    from charstudio.mini.world import random_character, render

    picture = render(*random_character(7, 64)).convert("RGB")
    latents = mini.encode(picture)
    assert tuple(latents.shape) == (1, 4, 16, 16)
    back = mini.decode(latents)[0]
    error = np.abs(np.asarray(back, dtype=float) - np.asarray(picture, dtype=float)).mean()
    assert error < 8.0, error  # mean absolute error out of 255; the report measured 3.1 on held-out pictures
