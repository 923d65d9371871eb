"""mini's own identity scorer (#36): the shipped weights tell mini-world characters apart on
held-out renders, embed deterministically, load from safetensors only, and its training recipe
is deterministic and resumes after a kill."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from charstudio.errors import ModelLoadError

HELD_OUT = 2_000_000_000 + 100_000  # inside the test seed range, which training never draws from


def held_out_view(seed: int, view: int):
    """Character ``seed`` (its attributes) in a pose and background of its own, drawn here with the
    world's public functions only."""
    from charstudio.mini.world import BACKGROUNDS, random_attributes, random_pose, render

    attrs = random_attributes(random.Random(seed))
    rng = random.Random(seed * 7 + 1_000 + view)
    pose = random_pose(rng, 64)
    return render(attrs.replace(background=rng.choice(list(BACKGROUNDS))), pose)


def auc_by_counting(positive: np.ndarray, negative: np.ndarray) -> float:
    """The share of (positive, negative) pairs ranked right, ties counting half."""
    p, n = positive[:, None], negative[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (len(positive) * len(negative)))


@pytest.fixture(scope="module")
def scorer():
    from charstudio.identity.mini_scorer import MiniScorer

    return MiniScorer()


def test_training_never_draws_the_held_out_seeds():
    from charstudio.identity import train

    assert train.TRAIN_SEEDS[1] <= train.VALIDATION_SEEDS < train.TEST_SEEDS <= HELD_OUT
    recipe = train.IdentityRecipe()
    rng = np.random.default_rng([recipe.seed, 0])
    assert rng.integers(*train.TRAIN_SEEDS, 10_000).max() < train.TRAIN_SEEDS[1]


def test_mini_scorer_tells_characters_apart_on_held_out_renders(scorer):
    # 1. 240 held-out characters, each in two poses and backgrounds
    n = 240
    images = [held_out_view(HELD_OUT + i, v) for i in range(n) for v in (0, 1)]
    emb = scorer.embed(images)
    assert emb.shape == (2 * n, 128) and emb.dtype == np.float32
    diff = scorer.difference(emb, emb)
    score = 1.0 - diff
    # 2. positives: the same character's two views; negatives: a view against the next character's
    positive = np.array([score[2 * i, 2 * i + 1] for i in range(n)])
    negative = np.array([score[2 * i, 2 * ((i + 1) % n) + 1] for i in range(n)])
    auc = auc_by_counting(positive, negative)
    assert auc >= 0.95, f"ROC AUC {auc:.4f} on {n} + {n} held-out pairs"
    # 3. the threshold from identity.json keeps most of each side on its side
    assert (positive >= scorer.min_score).mean() > 0.75 and (negative < scorer.min_score).mean() > 0.9


def test_mini_scorer_embeds_deterministically(scorer):
    from charstudio.identity.mini_scorer import MiniScorer

    images = [held_out_view(HELD_OUT + 7, 0), held_out_view(HELD_OUT + 7, 0), held_out_view(HELD_OUT + 8, 1)]
    first = scorer.embed(images)
    np.testing.assert_array_equal(first[0], first[1])
    np.testing.assert_array_equal(first, MiniScorer().embed(images))  # a fresh load, same numbers
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)


def test_the_shipped_threshold_separates_a_clear_same_and_different_pair(scorer):
    from charstudio.mini.world import Attributes, render
    from charstudio.pose import load_pose

    red = Attributes(hair_colour="red", hair_style="long", eye_colour="green", outfit_colour="blue",
                     outfit_type="dress", accessory="hat", skin="light", background="white")
    other = Attributes(hair_colour="black", hair_style="spiky", eye_colour="brown", outfit_colour="yellow",
                       outfit_type="armour", accessory="glasses", skin="dark", background="white")
    front, walking = load_pose("standing_front").fit(64, 64), load_pose("walking").fit(64, 64)
    report = scorer.report([render(red, front), render(red.replace(background="light blue"), walking),
                            render(other, front)])
    info = json.loads((scorer.folder / "identity.json").read_text())
    assert report.threshold == pytest.approx(1 - info["threshold"], abs=1e-6) and report.scorer == "mini"
    assert report.scores[1] >= report.threshold > report.scores[2]
    assert report.below == [2]


def test_mini_scorer_loads_safetensors_only(tmp_path, monkeypatch):
    import shutil

    import torch

    from charstudio.identity.mini_scorer import DEFAULT_FOLDER, MiniScorer

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load (pickle) was called")

    monkeypatch.setattr(torch, "load", no_pickle)
    assert sorted(p.name for p in DEFAULT_FOLDER.iterdir()) == ["identity.json", "model.safetensors"]
    assert MiniScorer().embed([held_out_view(HELD_OUT, 0)]).shape == (1, 128)
    # a folder whose weights are not a safetensors file is refused, never unpickled
    folder = tmp_path / "identity"
    shutil.copytree(DEFAULT_FOLDER, folder)
    (folder / "model.safetensors").write_bytes(b"\x80\x04K\x01.")  # a pickle's bytes
    with pytest.raises(ModelLoadError, match=r"model.safetensors' is not a readable mini scorer weight file: it cannot be read as a safetensors"):
        MiniScorer(folder).embed([held_out_view(HELD_OUT, 0)])
    (folder / "identity.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"identity.json' has no number under 'threshold'"):
        MiniScorer(folder)


def test_training_is_deterministic_and_resumes_after_a_kill(tmp_path, monkeypatch):
    import torch

    from charstudio.identity import train

    torch.set_num_threads(1)
    arch = {"size": 64, "channels": [8, 16], "dim": 16}
    recipe = train.IdentityRecipe(steps=4, characters=2, views=2, checkpoint_every=2, warmup=2)
    whole = train.train(recipe, tmp_path / "whole", arch).state_dict()

    real = train.training_batch

    def killed_at_step_3(r, step, size):
        if step == 3:
            raise KeyboardInterrupt
        return real(r, step, size)

    monkeypatch.setattr(train, "training_batch", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train.train(recipe, tmp_path / "killed", arch)
    assert json.loads((tmp_path / "killed" / "state.json").read_text())["step"] == 2
    monkeypatch.setattr(train, "training_batch", real)
    resumed = train.train(recipe, tmp_path / "killed", arch)
    assert resumed.training_state["step"] == 4
    for name, value in whole.items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    # stopping early on purpose (--stop-after) and going on later ends the same
    assert train.train(recipe, tmp_path / "stopped", arch, stop_after=2).training_state["step"] == 2
    going_on = train.train(recipe, tmp_path / "stopped", arch).state_dict()
    assert all(torch.equal(value, going_on[name]) for name, value in whole.items())
    # and the seed matters: another seed trains other weights
    other = train.train(train.IdentityRecipe(**{**recipe.__dict__, "seed": 1}), tmp_path / "other", arch)
    assert not torch.equal(other.state_dict()["head.weight"], whole["head.weight"])
