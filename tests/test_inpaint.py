"""Inpainting (charstudio.workflows.inpaint): measured on `mini`, whose pictures' truth is known,
and on 9-channel inpainting UNets built from the tiny models."""

from __future__ import annotations

import numpy as np
import pytest

from charstudio.errors import ConfigError, InputFileError
from charstudio.models.loading import packaged_model_dir
from charstudio.workflows import masks as M
from helpers import pixels as arr

MINI = packaged_model_dir("mini")
needs_mini = pytest.mark.skipif(not (MINI / "model_index.json").is_file(), reason="mini weights not built")
STEPS = 12
SEEDS = range(10)


@pytest.fixture(scope="module")
def mini():
    from charstudio import Studio

    return Studio.from_pretrained("mini", device="cpu")


def hair_box(pose, size=64):
    """The box around the hair region of a pose, 2 px wider each side."""
    from charstudio.mini.measure import hair_region

    ys, xs = np.nonzero(hair_region(pose, size))
    return (max(int(xs.min()) - 2, 0), max(int(ys.min()) - 2, 0), min(int(xs.max()) + 3, size),
            min(int(ys.max()) + 3, size))


@pytest.fixture(scope="module")
def hair_runs(mini):
    """Ten characters drawn with red hair, then inpainted with blue hair inside a box round it."""
    import random

    from charstudio.mini.world import random_attributes, random_pose

    runs = []
    for seed in SEEDS:
        rng = random.Random(10_000 + seed)
        attrs = random_attributes(rng).replace(hair_colour="red", accessory="none")
        pose = random_pose(rng, 64)
        source = mini.generate(attrs.caption(), pose=pose, seed=seed, num_inference_steps=STEPS)
        box = hair_box(pose)
        # (the watermark off: it covers the whole picture, and the test looks at what the mask leaves alone)
        blue = mini.inpaint(source, mask=box, prompt=attrs.replace(hair_colour="blue").caption(), strength=0.8,
                            watermark=False)
        runs.append((pose, box, source, blue))
    return runs


@pytest.fixture(scope="module")
def drawn(mini):
    """One character drawn with its pose (for the tests that need any picture)."""
    from charstudio.mini.world import random_character

    attrs, pose = random_character(7, 64)
    return pose, mini.generate(attrs.replace(accessory="none").caption(), pose=pose, seed=7, num_inference_steps=8)


@needs_mini
def test_inpainting_a_box_changes_the_hair_and_keeps_every_pixel_beyond_the_seam(mini, hair_runs):
    from charstudio.mini.measure import hair_region, nearest_colour, region_colour

    before, after = [], []
    for pose, box, source, blue in hair_runs:
        # outside the box, beyond the 4 px seam: at most the VAE round trip's error of an
        # unmasked picture, and in fact exactly the source's pixels (they are pasted back)
        round_trip = np.abs(arr(mini.decode(mini.encode(source.image))[0]) - arr(source.image)).max()
        outside = M.soft_mask(M.box_mask(box, 64, 64), 4) == 0
        change = np.abs(arr(blue.image) - arr(source.image))[outside].max()
        assert change <= round_trip and change == 0, (box, change, round_trip)
        region = hair_region(pose)
        before.append(nearest_colour(region_colour(source.image, region)))
        after.append(nearest_colour(region_colour(blue.image, region)))
    assert before.count("red") >= 8, before  # the change is real: the sources had red hair
    assert after.count("blue") >= 8, after


@needs_mini
def test_the_recipe_records_the_inpainting_and_the_png_re_runs_it(mini, hair_runs, tmp_path):
    from charstudio import Result

    pose, box, source, blue = hair_runs[0]
    spec = blue.recipe.inpaint
    assert spec["mask"] == {"box": list(box)} and spec["strength"] == 0.8 and spec["seam"] == 4
    assert spec["source"]["recipe"]["prompt"] == source.recipe.prompt  # re-running draws the source first
    path = blue.save(tmp_path)[0]
    again = mini.run(Result.from_png(path).recipe)
    assert np.array_equal(arr(again.image), arr(blue.image))


@needs_mini
def test_an_outside_picture_is_recorded_by_path_and_digest_and_refused_when_changed(mini, drawn, tmp_path):
    from charstudio import Result

    source = drawn[1].image
    plain = tmp_path / "drawing.png"
    source.save(plain)  # no recipe in it: an outside picture
    out = mini.inpaint(plain, mask="4,4,20,20", prompt="a girl with blue hair", seed=5, strength=0.6,
                       num_inference_steps=6, watermark=False)  # (off: the test looks beyond the mask)
    spec = out.recipe.inpaint
    assert spec["source"]["path"] == str(plain.resolve()) and spec["source"]["sha256"] == M.picture_sha256(source)
    outside = M.soft_mask(M.box_mask((4, 4, 20, 20), 64, 64), 4) == 0
    assert np.array_equal(arr(out.image)[outside], arr(source)[outside])
    recipe = Result.from_png(out.save(tmp_path / "out")[0]).recipe
    assert np.array_equal(arr(mini.run(recipe).image), arr(out.image))
    changed = source.copy()
    changed.putpixel((60, 60), (0, 0, 0))
    changed.save(plain)
    with pytest.raises(InputFileError, match="pixels changed"):
        mini.run(recipe)
    plain.unlink()
    with pytest.raises(InputFileError, match="gone"):
        mini.run(recipe)
    # an in-memory picture goes along with the recipe
    assert np.array_equal(arr(mini.run(recipe, init_image=source).image), arr(out.image))


@needs_mini
def test_a_picture_mask_is_stored_in_the_recipe_and_a_region_comes_from_the_pose(mini, drawn, tmp_path):
    from PIL import Image

    pose, source = drawn
    mask = np.zeros((64, 64), dtype=bool)
    mask[30:50, 10:30] = True
    path = tmp_path / "mask.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    out = mini.inpaint(source, mask=str(path), prompt="a girl with green hair", strength=0.6, num_inference_steps=6,
                       watermark=False)  # (off: the test looks beyond the mask)
    assert np.array_equal(M.decode_mask(out.recipe.inpaint["mask"]["picture"]), mask)
    outside = M.soft_mask(mask, 4) == 0
    assert np.array_equal(arr(out.image)[outside], arr(source.image)[outside])
    assert (arr(out.image)[mask] != arr(source.image)[mask]).any()

    region = mini.inpaint(source, mask="face", prompt="a girl with green hair", strength=0.6, num_inference_steps=6,
                          watermark=False)
    assert region.recipe.inpaint["mask"] == {"region": "face", "padding": M.DEFAULT_PADDING}
    face = M.region_mask(pose, "face", 64, 64)
    assert face[pose.body[0, 1].astype(int), pose.body[0, 0].astype(int)]  # the nose is in the face's box
    outside = M.soft_mask(face, 4) == 0
    assert np.array_equal(arr(region.image)[outside], arr(source.image)[outside])


@needs_mini
def test_bad_masks_are_refused_in_one_line_before_any_drawing(mini, tmp_path, monkeypatch):
    from PIL import Image

    from charstudio import Result
    from charstudio.pose import Pose, load_pose

    def no_drawing(*a, **k):
        raise AssertionError("the model ran")

    picture = Image.new("RGB", (64, 64), (200, 220, 180))
    standing = load_pose("standing_front").fit(64, 64)
    recipe = mini.make_config("a girl with red hair", seed=1, pose=standing)
    source = Result([picture], [recipe])
    monkeypatch.setattr(mini, "draw", no_drawing)
    Image.new("L", (32, 32), 255).save(tmp_path / "small.png")
    Image.new("L", (64, 64), 0).save(tmp_path / "empty.png")
    body = standing.body.copy()
    body[[3, 4, 6, 7], 2] = 0  # no elbows, no wrists, and no hand points: no hands
    handless = recipe.replace(pose=Pose(body, 64, 64).to_dict())
    cases = [(source, str(tmp_path / "small.png"), "32x32"), (source, str(tmp_path / "empty.png"), "empty"),
             (source, (40, 40, 80, 60), "inside the 64x64 picture"), (source, "-5,0,10,10", "inside"),
             (Result([picture], [handless]), "hands", "no hands"), (source, "elbows", "one of face")]
    for item, mask, words in cases:
        with pytest.raises(ConfigError, match=words) as info:
            mini.inpaint(item, mask=mask, prompt="a girl with blue hair")
        assert info.value.field == "mask" and "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.png", "small.png"]  # nothing written


def _tiny_studio(model, channels):
    """A tiny model; with channels=9 its UNet takes 9 (latents, mask, masked latents): an
    inpainting UNet."""
    import torch
    from diffusers import UNet2DConditionModel

    from charstudio import Studio

    base = Studio.from_pretrained(model, device="cpu")
    if channels == 4:
        return base
    unet = base.components["unet"]
    torch.manual_seed(0)
    nine = UNet2DConditionModel.from_config({**unet.config, "in_channels": 9})
    parts = {**base.components, "unet": nine}
    return Studio(parts, model_id=base.model_id, device=base.device, dtype=base.dtype,
                  default_size=base.default_size, default_steps=2, default_guidance=base.default_guidance)


@pytest.mark.parametrize("model,channels", [("tiny", 9), ("tiny-sdxl", 9), ("tiny-sdxl", 4)])
def test_both_families_inpaint_with_either_unet(model, channels, tmp_path):
    """A 9-channel UNet runs the family's inpainting pipeline; a 4-channel one img2img with the
    latent blend. Either way the pixels beyond the seam are kept and the recipe re-runs."""
    from charstudio import Result

    studio = _tiny_studio(model, channels)
    size = studio.default_size
    picture = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    from PIL import Image

    picture = Image.fromarray(picture)
    box = (size // 4, size // 4, size // 2, size // 2)
    out = studio.inpaint(picture, mask=box, prompt="a red fox", seed=3, strength=1.0, num_inference_steps=2,
                         watermark=False)  # (off: the test looks beyond the mask)
    if channels == 9:
        assert type(studio.pipeline("inpaint")).__name__ == studio.family.pipelines["inpaint"]
    assert out.extras["kind"] == ("inpaint" if channels == 9 else "img2img")
    outside = M.soft_mask(M.box_mask(box, size, size), 4) == 0
    inside = M.box_mask(box, size, size)
    assert np.array_equal(arr(out.image)[outside], arr(picture)[outside])
    assert (arr(out.image)[inside] != arr(picture)[inside]).any()
    again = studio.run(Result.from_png(out.save(tmp_path)[0]).recipe, init_image=picture)
    assert np.array_equal(arr(again.image), arr(out.image))


@needs_mini
def test_cli_inpaint_and_detail_write_pngs_that_carry_the_workflow(drawn, tmp_path, capsys):
    from charstudio import Result
    from charstudio.cli import main

    source = drawn[1].save(tmp_path / "src")[0]
    out = tmp_path / "out"
    assert main(["inpaint", str(source), "--mask", "hair", "--prompt", "a girl with blue hair", "--steps", "4",
                 "--seed", "2", "--out", str(out)]) == 0
    written = [p for p in capsys.readouterr().out.split() if p.endswith(".png")]
    recipe = Result.from_png(written[0]).recipe
    assert recipe.inpaint["mask"] == {"region": "hair", "padding": 0.15} and recipe.seed == 2
    assert main(["detail", str(source), "--parts", "face", "--steps", "4", "--out", str(out)]) == 0
    written = [p for p in capsys.readouterr().out.split() if p.endswith(".png")]
    assert Result.from_png(written[0]).recipe.detail["parts"] == ["face"]
    # bad input: one line, exit code 2, nothing written
    bad = tmp_path / "bad"
    for args in (["inpaint", str(source), "--mask", "0,0,90,10"], ["inpaint", str(source), "--mask", "wings"],
                 ["detail", str(source), "--parts", "face,wings"]):
        assert main([*args, "--out", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert "is not valid" in err and len(err.splitlines()) == 1, err
    assert not bad.exists()


def test_masks_regions_seams_and_stored_pictures():
    from charstudio.pose import load_pose

    pose = load_pose("waving").fit(64, 64)
    body = pose.body
    for region, points in (("face", [0, 14, 15]), ("torso", [1, 2, 5, 8, 11]), ("legs", [9, 10, 12, 13])):
        mask = M.region_mask(pose, region, 64, 64)
        assert all(mask[int(body[i, 1]), int(body[i, 0])] for i in points), region
    hands = M.region_boxes(pose, "hands", 64, 64)
    assert len(hands) == 2 and all(any(x0 <= body[i, 0] < x1 and y0 <= body[i, 1] < y1 for x0, y0, x1, y1 in hands)
                                   for i in (4, 7))  # each wrist is in a hand's box
    hair = M.region_boxes(pose, "hair", 64, 64)[0]
    assert hair[3] <= M.region_boxes(pose, "face", 64, 64)[0][3] and hair[1] < body[0, 1]  # above the chin
    # the seam: 1 inside, a fade over 4 px outside, exactly 0 beyond
    alpha = M.soft_mask(M.box_mask((10, 10, 20, 20), 64, 64), 4)
    assert alpha[15, 15] == 1 and 0 < alpha[15, 23] < alpha[15, 21] < 1 and alpha[15, 24] == 0
    assert M.latent_mask(alpha, 4)[15 // 4, 23 // 4] and not M.latent_mask(alpha, 4)[15 // 4, 28 // 4]
    mask = np.random.default_rng(1).random((48, 64)) > 0.7
    assert np.array_equal(M.decode_mask(M.encode_mask(mask)), mask)
    assert M.parse_box("1, 2,30,40") == (1, 2, 30, 40)
    with pytest.raises(ConfigError, match="right > left"):
        M.check_box((20, 5, 10, 30), 64, 64)
