"""The detail pass (charstudio.workflows.detail), measured on `mini`."""

from __future__ import annotations

import numpy as np
import pytest

from charstudio.errors import ConfigError
from charstudio.models.loading import packaged_model_dir
from charstudio.workflows import masks as M
from helpers import pixels as arr

MINI = packaged_model_dir("mini")
pytestmark = pytest.mark.skipif(not (MINI / "model_index.json").is_file(), reason="mini weights not built")
STEPS = 8
PROMPT = "a girl with long red hair, a blue dress"


@pytest.fixture(scope="module")
def mini(mini_studio):
    return mini_studio


@pytest.fixture(scope="module")
def drawn(mini):
    # (the watermark off here: it covers the whole picture, and these tests look at what the pass
    # leaves alone; tests/test_watermark.py checks a detail pass with it on)
    return mini.generate(PROMPT, pose="waving", seed=4, num_inference_steps=STEPS, watermark=False)


def test_the_face_pass_changes_nothing_outside_the_face_box_beyond_the_seam(mini, drawn, tmp_path):
    from charstudio import Result
    from charstudio.pose import Pose

    out = mini.detail(drawn, parts=("face",))
    spec = out.recipe.detail
    assert spec == {"parts": ["face"], "strength": 0.35, "steps": STEPS, "padding": 0.15, "seam": 4}
    # the box comes from the pose the picture was drawn with
    (part, box), = out.extras["detail_boxes"][0]
    pose = Pose.from_dict(drawn.recipe.pose)
    assert part == "face" and box == M.region_boxes(pose, "face", 64, 64, 0.15)[0]
    outside = M.soft_mask(M.box_mask(box, 64, 64), 4) == 0
    inside = M.box_mask(box, 64, 64)
    assert np.array_equal(arr(out.image)[outside], arr(drawn.image)[outside])
    assert np.abs(arr(out.image)[inside] - arr(drawn.image)[inside]).mean() > 1  # it did redraw the face
    # recorded: the PNG re-runs the drawing and then the pass
    again = mini.run(Result.from_png(out.save(tmp_path)[0]).recipe)
    assert np.array_equal(arr(again.image), arr(out.image))


def test_detail_true_on_generate_and_sheet_runs_the_pass_per_image(mini, drawn):
    out = mini.generate(PROMPT, pose="waving", seed=4, num_inference_steps=STEPS, detail=True, watermark=False)
    assert out.recipe.detail["parts"] == ["face", "hands"]
    boxes = [box for _, box in out.extras["detail_boxes"][0]]
    assert len(boxes) == 3  # the face and both hands
    parts = np.zeros((64, 64), dtype=bool)
    for box in boxes:
        parts |= M.box_mask(box, 64, 64)
    outside = M.soft_mask(parts, 4) == 0
    assert np.array_equal(arr(out.image)[outside], arr(drawn.image)[outside])  # the same drawing underneath
    assert not np.array_equal(arr(out.image), arr(drawn.image))

    sheet = mini.sheet(PROMPT, ["waving", "standing_front"], seed=4, num_inference_steps=STEPS,
                       detail={"parts": ["face"]}, compute_score=False, watermark=False)
    plain = mini.sheet(PROMPT, ["waving", "standing_front"], seed=4, num_inference_steps=STEPS,
                       compute_score=False, watermark=False)
    assert [r.detail["parts"] for r in sheet.recipes] == [["face"], ["face"]]
    for recipe, image, before in zip(sheet.recipes, sheet.images, plain.images):
        from charstudio.pose import Pose

        face = M.region_mask(Pose.from_dict(recipe.pose), "face", 64, 64)
        outside = M.soft_mask(face, 4) == 0
        # a sheet draws its poses in one batch: equal up to float rounding outside the face
        assert np.abs(arr(image)[outside] - arr(before)[outside]).max() <= 2
        assert np.abs(arr(image)[face] - arr(before)[face]).mean() > 1


def test_bad_parts_are_refused_before_anything_is_drawn(mini, drawn, monkeypatch):
    from charstudio.pose import Pose, load_pose

    def no_drawing(*a, **k):
        raise AssertionError("the model ran")

    monkeypatch.setattr(mini, "draw", no_drawing)
    body = load_pose("standing_front").fit(64, 64).body.copy()
    body[[3, 4, 6, 7], 2] = 0  # no elbows or wrists, no hand points: no hands
    handless = Pose(body, 64, 64)
    with pytest.raises(ConfigError, match="no hands") as info:
        mini.generate(PROMPT, pose=handless, detail=True)
    assert info.value.field == "detail.parts"
    with pytest.raises(ConfigError, match="no hands"):
        mini.detail(drawn.__class__(drawn.images, [drawn.recipe.replace(pose=handless.to_dict())]), parts="hands")
    for parts in (["elbows"], [], "face,face"):
        with pytest.raises(ConfigError) as info:
            mini.detail(drawn, parts=parts)
        assert info.value.field == "detail.parts" and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="prompt"):
        mini.detail(drawn.image, parts="face")  # an outside picture needs its prompt


def test_a_picture_without_a_recipe_gets_its_boxes_from_the_detector(mini, drawn):
    """An outside picture (no recipe, no pose): the OpenPose detector finds the figure, and its
    face box is what changes. controlnet-aux's detector weights cannot be downloaded here, so a
    stand-in reads the pose from dots painted into the picture (another pose than the one it
    was drawn with, so the boxes can only come from the detector's answer)."""
    from charstudio.pose import load_pose
    from helpers import Detector, paint_pose

    painted = load_pose("reaching_up").fit(64, 64).translate(6, 3)
    picture, detected = paint_pose(drawn.image, painted)  # pixels only: no recipe travels with it
    assert not detected.isclose(load_pose("waving").fit(64, 64), atol=2.0)
    # (the watermark off: it covers the whole picture, and the test looks beyond the face box)
    out = mini.detail(picture, parts=("face",), prompt=PROMPT, detector=Detector(), seed=4, steps=STEPS,
                      watermark=False)
    (part, box), = out.extras["detail_boxes"][0]
    assert part == "face" and box == M.region_boxes(detected, "face", 64, 64, 0.15)[0]
    assert box != M.region_boxes(load_pose("waving").fit(64, 64), "face", 64, 64, 0.15)[0]
    outside = M.soft_mask(M.box_mask(box, 64, 64), 4) == 0
    assert np.array_equal(arr(out.image)[outside], arr(picture)[outside])
    assert np.abs(arr(out.image)[M.box_mask(box, 64, 64)] - arr(picture)[M.box_mask(box, 64, 64)]).mean() > 1
    inpainted = mini.inpaint(picture, mask="hair", prompt="a girl with long blue hair, a blue dress",
                             detector=Detector(), seed=4, num_inference_steps=STEPS, watermark=False)
    hair = M.region_mask(detected, "hair", 64, 64, 0.15)
    keep = M.soft_mask(hair, 4) == 0
    assert np.array_equal(arr(inpainted.image)[keep], arr(picture)[keep]) and inpainted.recipe.inpaint["source"]
    assert not np.array_equal(hair, M.region_mask(load_pose("waving").fit(64, 64), "hair", 64, 64, 0.15))
    # The detected pose is recorded: a re-run (with the picture) needs no detector.
    assert load_pose(inpainted.recipe.pose).isclose(detected, atol=1e-6)
    again = mini.run(inpainted.recipe, init_image=picture)
    assert np.array_equal(arr(again.image), arr(inpainted.image))
