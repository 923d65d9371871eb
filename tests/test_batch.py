"""Batches: a recipe's num_images and a sheet's poses run as one UNet batch, each image with its
own seed's noise, and each stays within one 8-bit level of its recipe run alone."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import pixels as px
from helpers import tiny_ip_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(num_inference_steps=3, width=32, height=32)
POSES = ["standing_front", "walking", "jumping", "waving"]


def unet_batches(studio):
    """Record the batch size of every UNet call (rows, CFG halves included)."""
    calls: list[int] = []
    handle = studio.components["unet"].register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((args[0] if args else kwargs["sample"]).shape[0]),
        with_kwargs=True)
    return calls, handle


def largest_difference(a, b) -> int:
    return int(np.abs(px(a) - px(b)).max())


def test_num_images_share_one_unet_call_and_match_their_recipes_alone(mini_studio):
    calls, handle = unet_batches(mini_studio)
    try:
        result = mini_studio.generate("a girl with red hair", seed=11, num_inference_steps=6, num_images=4)
    finally:
        handle.remove()
    assert calls == [8] * 6  # 4 images x (uncond, cond), one call per step
    assert result.extras["batches"] == [4]
    assert [r.seed for r in result.recipes] == [11, 12, 13, 14]
    assert all(r.num_images == 1 for r in result.recipes)
    alone = [mini_studio.run(r).image for r in result.recipes]
    diffs = [largest_difference(a, b) for a, b in zip(alone, result.images)]
    assert max(diffs) <= 1, diffs  # float rounding of batched kernels only
    # Each image has its own noise: the four pictures differ from each other.
    assert min(np.abs(px(result.images[0]) - px(im)).mean() for im in result.images[1:]) > 2


def test_max_batch_one_draws_each_image_alone_bit_for_bit(mini_studio):
    mini_studio.max_batch = 1
    try:
        calls, handle = unet_batches(mini_studio)
        try:
            result = mini_studio.generate("a boy with blue hair", seed=3, num_inference_steps=4, num_images=2)
        finally:
            handle.remove()
    finally:
        mini_studio.max_batch = 8
    assert calls == [2] * 8 and result.extras["batches"] == [1, 1]
    assert all((px(mini_studio.run(r).image) == px(im)).all() for r, im in zip(result.recipes, result.images))


def test_sheet_poses_run_as_one_batch_with_their_own_control_images(mini_studio):
    calls, handle = unet_batches(mini_studio)
    try:
        sheet = mini_studio.sheet("rin", POSES, seed=5, num_inference_steps=4, compute_score=False)
    finally:
        handle.remove()
    assert calls == [8] * 4
    for image, recipe in zip(sheet.images, sheet.recipes):
        assert largest_difference(image, mini_studio.run(recipe).image) <= 1
    # The poses differ: each image followed its own skeleton, not the first one's.
    assert np.abs(px(sheet.images[0]) - px(sheet.images[1])).mean() > 2


def test_reference_attention_reads_the_anchor_in_a_batch(tiny_studio):
    """The anchor runs alone (recorded), the other poses in one batch reading it: the same
    pictures as reading it one pose at a time."""
    settings = dict(seed=4, same_noise=False, reference_strength=1.0, compute_score=False, **FAST)
    calls, handle = unet_batches(tiny_studio)
    try:
        batched = tiny_studio.sheet("a knight", POSES, **settings)
    finally:
        handle.remove()
    assert calls == [2] * 3 + [6] * 3  # anchor alone, then three poses together
    tiny_studio.max_batch = 1
    try:
        one_by_one = tiny_studio.sheet("a knight", POSES, **settings)
        plain = tiny_studio.sheet("a knight", POSES, **{**settings, "reference_strength": 0.0})
    finally:
        tiny_studio.max_batch = 8
    for a, b, c in zip(batched.images[1:], one_by_one.images[1:], plain.images[1:]):
        assert largest_difference(a, b) <= 1
        diff = np.abs(px(a) - px(c))  # the reference is really used in the batch
        assert diff.max() >= 2 and diff.mean() > 0.05


def test_anchor_rows_repeat_in_cfg_order():
    """A batch of n holds [uncond x n, cond x n]: anchor row 0 (uncond) feeds rows 0..n-1."""
    import torch

    from charstudio.sheets.reference import _rows_for

    ref = torch.tensor([[0.0], [1.0]])  # [uncond, cond]
    assert _rows_for(ref, 6).flatten().tolist() == [0, 0, 0, 1, 1, 1]
    assert _rows_for(ref, 2) is ref
    assert _rows_for(torch.tensor([[5.0]]), 3).flatten().tolist() == [5, 5, 5]  # no CFG


def test_reference_bank_rewinds_between_batches(tiny_studio):
    """With max_batch 2 the three reading poses take two calls; the second starts from step 0."""
    settings = dict(seed=4, same_noise=False, reference_strength=0.8, compute_score=False, **FAST)
    tiny_studio.max_batch = 2
    try:
        split = tiny_studio.sheet("a knight", POSES, **settings)
        tiny_studio.max_batch = 1
        one_by_one = tiny_studio.sheet("a knight", POSES, **settings)
    finally:
        tiny_studio.max_batch = 8
    assert all(largest_difference(a, b) <= 1 for a, b in zip(split.images, one_by_one.images))


def test_ip_adapter_conditions_every_image_of_a_batch(fresh_studio, tmp_path):
    from PIL import Image

    tiny_ip_adapter(fresh_studio.components["unet"], tmp_path)
    blue = Image.new("RGB", (64, 64), (0, 0, 255))
    settings = dict(seed=1, ip_adapter_weights=str(tmp_path), ip_adapter_image=blue, ip_adapter_scale=1.0,
                    ip_adapter_weight_name="ip-adapter_tiny.safetensors", compute_score=False, **FAST)
    batched = fresh_studio.sheet("a knight", POSES[:3], **settings)
    fresh_studio.max_batch = 1
    try:
        one_by_one = fresh_studio.sheet("a knight", POSES[:3], **settings)
    finally:
        fresh_studio.max_batch = 8
    plain = fresh_studio.sheet("a knight", POSES[:3], seed=1, compute_score=False, **FAST)
    for a, b, c in zip(batched.images, one_by_one.images, plain.images):
        assert largest_difference(a, b) <= 1
        assert np.abs(px(a) - px(c)).mean() > 1


def test_batch_progress_counts_every_image_step(mini_studio):
    seen = []
    mini_studio.generate("a girl", seed=1, num_inference_steps=3, num_images=3, progress=seen.append)
    assert [(p.image, p.batch, p.step) for p in seen] == [(1, 3, 1), (1, 3, 2), (1, 3, 3)]
    assert [round(p.fraction, 3) for p in seen] == [0.333, 0.667, 1.0]


def test_prompts_of_other_lengths_and_prompt_editing_run_in_their_own_calls(tiny_studio):
    from charstudio.config import GenerationConfig

    base = tiny_studio.make_config("a knight", seed=1, **FAST)
    long_prompt = "a knight, " + ", ".join(f"detail {i}" for i in range(40))  # two 75-token chunks
    configs = [base, base.replace(seed=2), base.replace(prompt=long_prompt), base.replace(seed=3),
               base.replace(prompt="a [knight:wizard:0.5]")]
    result = tiny_studio.run_batch(configs)
    assert [r.prompt for r in result.recipes] == [c.prompt for c in configs]
    assert isinstance(result.recipes[0], GenerationConfig)
    for image, recipe in zip(result.images, result.recipes):
        assert largest_difference(image, tiny_studio.run(recipe).image) <= 1


def test_from_photo_runs_on_a_v_prediction_model_without_a_pose(mini_studio):
    """mini predicts v: its recipes default to CFG rescale, which img2img pipelines lack, so
    from_photo goes without it instead of refusing its own recipe."""
    from PIL import Image

    assert mini_studio.prediction_type == "v_prediction"
    photo = Image.new("RGB", (64, 64), (200, 100, 100))
    result = mini_studio.from_photo("rin", photo, pose=None, num_inference_steps=3, seed=2)
    assert result.recipe.guidance_rescale == 0.0 and result.image.size == (64, 64)


def test_reference_bank_reads_the_anchor_at_the_nearest_recorded_timestep():
    """Runs that start part-way (img2img: the hires fix, the detail pass) or a sheet's later
    batches read the anchor's state of their own timestep, not of their call count."""
    from charstudio.sheets.reference import ReferenceBank

    bank = ReferenceBank(0.5)
    bank.record()
    for t, state in ((999, "a"), (500, "b"), (1, "c")):
        bank.unet_called(t)
        bank.states.setdefault("layer", []).append(state)
    bank.read()
    for t, want in ((480, "b"), (999, "a"), (30, "c"), (500, "b")):
        bank.unet_called(t)
        assert bank._next("layer") == want
