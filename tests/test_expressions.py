"""Expression sheets: the expressions' words, the portrait pose and crop, the labelled grid of
crops on `mini`, and `charstudio expressions`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from charstudio.errors import ConfigError
from charstudio.pose import COCO18_NAMES, Pose, load_pose
from charstudio.workflows.expressions import (
    DEFAULT_EXPRESSIONS,
    EXPRESSION_WORDS,
    crop_box,
    portrait_pose,
    resolve_expressions,
)

KP = {name: i for i, name in enumerate(COCO18_NAMES)}


def test_expressions_by_name_words_and_pairs():
    assert [label for label, _ in resolve_expressions()] == list(DEFAULT_EXPRESSIONS)
    assert resolve_expressions("smiling, winking") == [("smiling", EXPRESSION_WORDS["smiling"]), ("winking", "winking")]
    assert resolve_expressions({"grin": "grinning, teeth"}) == [("grin", "grinning, teeth")]
    assert resolve_expressions([("pout", "pouting")]) == [("pout", "pouting")]
    with pytest.raises(ConfigError, match="asked for twice"):
        resolve_expressions("sad,angry,sad")
    with pytest.raises(ConfigError, match="expressions"):
        resolve_expressions([3])
    with pytest.raises(ConfigError, match="at least one"):
        resolve_expressions([])


def test_portrait_pose_frames_the_upper_body():
    pose = portrait_pose()
    assert pose.canvas_width == pose.canvas_height
    present = {name for name, i in KP.items() if pose.body[i, 2] > 0}
    for kept in ("nose", "neck", "right_shoulder", "left_shoulder", "right_hip", "left_hip", "right_ear"):
        assert kept in present
    # the legs are cropped out, not squashed onto the border
    assert not present & {"right_knee", "left_knee", "right_ankle", "left_ankle"}
    # the hips near the bottom, room above the head for hair
    assert 0.8 < pose.body[KP["right_hip"], 1] / pose.canvas_height < 0.98
    assert pose.body[KP["right_eye"], 1] / pose.canvas_height > 0.2


def test_portrait_box_holds_the_head_and_shoulders():
    for name in ("standing_front", "standing_side", "standing_back", "sitting"):
        pose = load_pose(name)
        x0, y0, x1, y1 = pose.portrait_box()
        assert np.isclose(x1 - x0, y1 - y0) and 0 <= x0 and 0 <= y0 and x1 <= pose.canvas_width
        head = [i for i in (0, 1, 2, 5, 14, 15, 16, 17) if pose.body[i, 2] > 0]
        xs, ys = pose.body[head, 0], pose.body[head, 1]
        assert (x0 < xs).all() and (xs < x1).all() and (y0 < ys).all() and (ys < y1).all(), name
        assert (y1 - y0) < 0.6 * pose.canvas_height  # a close-up, not the whole figure
    with pytest.raises(ConfigError, match="neck"):
        Pose(body=np.zeros((18, 3)), canvas_width=64, canvas_height=64).portrait_box()
    with pytest.raises(ConfigError, match="down_to"):
        load_pose("standing_front").portrait_box(down_to="knees")


def test_crop_drops_points_outside_the_box():
    front = load_pose("standing_front")
    top = front.crop((100, 0, 412, 450))
    assert (top.canvas_width, top.canvas_height) == (312, 450)
    assert np.allclose(top.body[KP["neck"], :2], front.body[KP["neck"], :2] - [100, 0])
    assert top.body[KP["right_knee"], 2] == 0 and top.body[KP["right_ankle"], 2] == 0
    with pytest.raises(ConfigError, match="box"):
        front.crop((10, 10, 5, 20))


def test_expression_sheet_refuses_bad_input_before_drawing(tiny_studio):
    with pytest.raises(ConfigError, match="crop"):
        tiny_studio.expressions("a knight", crop="face")
    with pytest.raises(ConfigError, match="labels"):
        tiny_studio.expressions("a knight", labels=["a"])
    with pytest.raises(ConfigError, match="pose"):
        tiny_studio.expressions("a knight", pose="no_such_pose")


# -- on mini ----------------------------------------------------------------------------------
EXPRESSIONS = ["neutral", "smiling"]


@pytest.fixture(scope="module")
def mini_expressions(mini_studio):
    return mini_studio.expressions("kai", EXPRESSIONS, seed=2, num_inference_steps=10, compute_score=False)


def test_each_picture_carries_its_expression_and_the_first_is_the_reference(mini_studio, mini_expressions):
    sheet = mini_expressions
    assert sheet.labels == EXPRESSIONS
    s = sheet.settings
    assert s["workflow"] == "expressions" and s["expressions"] == EXPRESSIONS and s["crop"] == "portrait"
    assert s["pose"] == "standing_front"  # mini (64 px) draws whole figures: the crop frames the face
    assert s["reference_strength"] == 0.5 and len({r.seed for r in sheet.recipes}) == 1
    front = load_pose("standing_front").fit(64, 64)
    for label, recipe in zip(EXPRESSIONS, sheet.recipes):
        assert recipe.prompt.endswith(", " + EXPRESSION_WORDS[label]) and recipe.character == "kai"
        assert Pose.from_dict(recipe.pose).isclose(front, atol=1e-3)
    # The first picture is the reference (it re-runs exactly: tests/test_turnaround.py); the
    # others are drawn looking at it, so alone (without it) their recipes draw something else.
    alone = mini_studio.run(sheet.recipes[1]).images[0]
    assert (np.asarray(alone) != np.asarray(sheet.images[1])).any()


def test_grid_shows_each_face_cropped_and_scaled_up(mini_expressions):
    from PIL import Image

    from charstudio.mini.measure import foreground, hair_region, iou, skeleton_mask

    sheet = mini_expressions
    x0, y0, x1, y1 = box = tuple(sheet.settings["crop_box"])
    pose = Pose.from_dict(sheet.recipes[0].pose)
    assert x1 - x0 == y1 - y0 < 40 and box == crop_box(sheet.recipes[0].pose, "portrait", 64, 64)
    for image, crop in zip(sheet.images, sheet.crops):
        assert crop.size == (64, 64)
        assert (np.asarray(crop) == np.asarray(image.crop(box).resize((64, 64), Image.LANCZOS))).all()
        # the figure is drawn on the pose, and the crop holds its head, hair and all
        figure = foreground(image)
        assert iou(figure, skeleton_mask(pose, 64, 64)) >= 0.5
        hair = hair_region(pose)
        ys, xs = np.nonzero(hair)
        assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
        assert figure[hair].mean() >= 0.7
    grid = np.asarray(sheet.grid_image.convert("RGB"))
    for i, crop in enumerate(sheet.crops):  # the cells hold the crops, in order (pad 4)
        x = 4 + i * (64 + 4)
        assert (grid[4:68, x:x + 64] == np.asarray(crop)).all()
        assert (grid[68:80, x:x + 64] < 128).any()  # with a label under each


def test_whole_pictures_without_crop_and_the_portrait_pose(tiny_studio):
    fast = dict(num_inference_steps=2, width=32, height=32, compute_score=False, seed=4)
    whole = tiny_studio.expressions("a knight", ["sad"], crop=None, **fast)
    assert whole.crops == [] and whole.settings["crop_box"] is None
    assert whole.grid_image.size[0] == 32 + 8
    portrait = tiny_studio.expressions("a knight", ["sad"], pose="portrait", **fast)
    assert portrait.recipes[0].prompt == f"a knight, {EXPRESSION_WORDS['sad']}, upper body"
    assert Pose.from_dict(portrait.recipes[0].pose).isclose(portrait_pose().fit(32, 32), atol=1e-3)


# -- the CLI --------------------------------------------------------------------------------
def test_cli_expressions(tmp_path, capsys):
    from charstudio.cli import main
    from charstudio.result import Result

    out = tmp_path / "faces"
    assert main(["expressions", "a knight", "--model", "tiny", "--expressions", "smiling,angry", "--steps", "2",
                 "--width", "32", "--height", "32", "--seed", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in printed[:4]] == ["00-smiling.png", "01-angry.png", "grid.png", "sheet.json"]
    sheet = json.loads((out / "sheet.json").read_text())
    assert sheet["settings"]["expressions"] == ["smiling", "angry"] and sheet["settings"]["crop"] == "portrait"
    assert Result.from_png(out / "01-angry.png").recipe.prompt == "a knight, " + EXPRESSION_WORDS["angry"]
    # tiny is a 128 px model: the whole standing figure, and the grid shows the crops
    from PIL import Image

    assert Image.open(out / "grid.png").size[0] == 2 * (32 + 4) + 4
    assert main(["expressions", "a knight", "--pose", "standing_frnt", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean standing_front" in capsys.readouterr().err and not (tmp_path / "x").exists()
