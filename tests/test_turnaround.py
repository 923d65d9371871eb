"""Turnaround sheets and the back view: keypoint geometry, the one-sided accessory rule, the
views as drawn by `mini`, and `charstudio turnaround`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from charstudio.errors import ConfigError
from charstudio.pose import COCO18_NAMES, Pose, load_pose
from charstudio.workflows.turnaround import DEFAULT_VIEWS, VIEWS, View, resolve_views

KP = {name: i for i, name in enumerate(COCO18_NAMES)}
FACE = [KP["nose"], KP["right_eye"], KP["left_eye"]]


def side(pose: Pose, name: str) -> float:
    """Where a keypoint is, seen by the viewer: < 0 left of the neck, > 0 right of it."""
    assert pose.body[KP[name], 2] > 0, name
    return float(pose.body[KP[name], 0] - pose.body[KP["neck"], 0])


def with_hands(pose: Pose) -> Pose:
    """The pose with a small hand at each wrist (for checking that hands keep their labels)."""
    def hand(wrist: np.ndarray, spread: float) -> np.ndarray:
        pts = np.zeros((21, 3))
        pts[:, 0] = wrist[0] + spread * np.linspace(0, 1, 21)
        pts[:, 1] = wrist[1] + np.linspace(0, 20, 21)
        pts[:, 2] = 1.0
        return pts

    return Pose(body=pose.body, canvas_width=pose.canvas_width, canvas_height=pose.canvas_height,
                hand_right=hand(pose.body[KP["right_wrist"]], -10.0), hand_left=hand(pose.body[KP["left_wrist"]], 10.0))


# -- Pose.back_view -------------------------------------------------------------------------
def test_back_view_turns_the_figure_round_about_its_neck_and_keeps_the_labels():
    front = with_hands(load_pose("standing_front"))
    back = front.back_view()
    neck_x = front.body[KP["neck"], 0]
    kept = [i for i in range(18) if i not in FACE]
    # every kept point: same height, reflected about the neck, same label
    assert np.allclose(back.body[kept, 1], front.body[kept, 1])
    assert np.allclose(back.body[kept, 0], 2 * neck_x - front.body[kept, 0])
    assert (back.body[kept, 2] > 0).all()
    # the face looks away: nose and eyes are gone (OpenPose's 0, 0, 0), the ears stay
    assert (back.body[FACE] == 0).all() and back.face is None
    # seen from behind the person's right side is on the viewer's right, their left on the left
    for part in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle", "ear"):
        assert side(front, f"right_{part}") < 0 < side(back, f"right_{part}"), part
        assert side(front, f"left_{part}") > 0 > side(back, f"left_{part}"), part
    # each hand keeps its own points (turned round with the wrist they hang from)
    assert np.allclose(back.hand_right[:, 0], 2 * neck_x - front.hand_right[:, 0])
    assert np.allclose(back.hand_left[:, 0], 2 * neck_x - front.hand_left[:, 0])
    assert back.hand_right[:, 0].mean() > neck_x > back.hand_left[:, 0].mean()
    # turning round twice gives the front back, less the face it cannot know
    again = back.back_view()
    assert np.allclose(again.body[kept], front.body[kept]) and (again.body[FACE] == 0).all()


def test_back_view_is_not_a_mirror():
    front = load_pose("standing_front")
    mirrored = front.mirror()
    # a mirrored front view still faces the viewer: nose kept, right side still on the viewer's left
    assert mirrored.body[KP["nose"], 2] > 0
    assert side(mirrored, "right_wrist") < 0 < side(front.back_view(), "right_wrist")


def test_library_back_pose_is_the_front_pose_seen_from_behind():
    turned, back = load_pose("standing_front").back_view(), load_pose("standing_back")
    assert turned.isclose(back, atol=3.0), np.abs(turned.body - back.body).max(axis=0)
    assert (back.body[FACE] == 0).all() and back.face is None


def test_back_view_axis_and_errors():
    front = load_pose("standing_front")
    shifted = front.back_view(axis=250.0)
    assert np.isclose(shifted.body[KP["neck"], 0], 2 * 250.0 - front.body[KP["neck"], 0])
    with pytest.raises(ConfigError, match="axis"):
        front.back_view(axis="middle")
    # without a neck the axis is the middle of the shoulders
    body = front.body.copy()
    body[KP["neck"]] = 0
    no_neck = Pose(body=body, canvas_width=512, canvas_height=768).back_view()
    mid = (front.body[KP["right_shoulder"], 0] + front.body[KP["left_shoulder"], 0]) / 2
    assert np.isclose(no_neck.body[KP["right_shoulder"], 0], 2 * mid - front.body[KP["right_shoulder"], 0])


# -- a one-sided accessory: the character's right hand ---------------------------------------
def right_wrist_in_control_image(pose: Pose) -> float:
    """The x of the right wrist's joint disc in the OpenPose control image, relative to the
    neck's disc (each joint is drawn in its own colour: right wrist (255, 255, 0), neck (255, 85, 0))."""
    arr = np.asarray(pose.render())

    def centre(colour: tuple[int, int, int]) -> float:
        ys, xs = np.nonzero((arr == colour).all(axis=-1))
        assert len(xs), colour
        return float(xs.mean())

    return centre((255, 255, 0)) - centre((255, 85, 0))


def test_one_sided_accessory_stays_in_the_right_hand_in_back_and_mirrored_views():
    """A sword held in the character's right hand is anchored to the right wrist. The mini world
    has no one-sided accessory (hat, glasses, scarf and cape are symmetric), so this checks the
    keypoints and the drawn control images; the next test checks mini's pictures."""
    waving = load_pose("waving")  # the right hand is raised (on the viewer's left, facing us)
    back, mirrored = waving.back_view(), waving.mirror()
    raised_y = waving.body[KP["right_wrist"], 1]
    assert raised_y < waving.body[KP["right_shoulder"], 1]
    # From behind the raised right hand, sword and all, is on the other side of the picture.
    assert side(waving, "right_wrist") < 0 < side(back, "right_wrist")
    assert back.body[KP["right_wrist"], 1] == raised_y
    assert right_wrist_in_control_image(waving) < 0 < right_wrist_in_control_image(back)
    # A mirrored picture of the pose is still a front view: the right hand (the sword) is the
    # mirror image of the left, lowered hand, on the viewer's left. Flipping the pixels instead
    # would have put the sword in the left hand.
    w = waving.canvas_width - 1e-3
    assert np.isclose(mirrored.body[KP["right_wrist"], 0], w - waving.body[KP["left_wrist"], 0])
    assert np.isclose(mirrored.body[KP["right_wrist"], 1], waving.body[KP["left_wrist"], 1])
    assert side(mirrored, "right_wrist") < 0 and right_wrist_in_control_image(mirrored) < 0
    assert mirrored.body[KP["left_wrist"], 1] == raised_y  # the raised hand is now the left one


# -- views ----------------------------------------------------------------------------------
def test_views_by_name_and_custom():
    assert [v.label for v in resolve_views()] == list(DEFAULT_VIEWS) == ["front", "three-quarter", "side", "back"]
    assert [v.pose for v in resolve_views()] == ["standing_front", "standing_three_quarter", "standing_side",
                                                 "standing_back"]
    assert "from behind" in VIEWS["back"].words and "from side" in VIEWS["side"].words
    assert [v.label for v in resolve_views("Back, three_quarter")] == ["back", "three-quarter"]
    waving_back = load_pose("waving").back_view()
    mixed = resolve_views(["front", ("back, waving", waving_back, "from behind"),
                           {"label": "sitting", "pose": "sitting", "words": "sitting"}])
    assert [v.label for v in mixed] == ["front", "back, waving", "sitting"] and mixed[1].pose is waving_back
    assert resolve_views(View("x", "walking", "walking"))[0].label == "x"
    with pytest.raises(ConfigError, match=r"views='thre quarter'.*did you mean three quarter"):
        resolve_views(["thre quarter"])
    with pytest.raises(ConfigError, match="asked for twice"):
        resolve_views("front,back,front")
    with pytest.raises(ConfigError, match="views"):
        resolve_views([("back", "standing_back")])
    with pytest.raises(ConfigError, match="at least one view"):
        resolve_views([])


def test_turnaround_refuses_poses_labels_and_extras(tiny_studio):
    with pytest.raises(ConfigError, match="extras"):
        tiny_studio.turnaround("a knight", extras=["a", "b", "c", "d"])
    with pytest.raises(ConfigError, match="views"):
        tiny_studio.turnaround("a knight", ["front", "upside down"])


# -- on mini ----------------------------------------------------------------------------------
WAVING = load_pose("waving")
MINI_VIEWS = [*DEFAULT_VIEWS, ("waving", WAVING, "waving"), ("back, waving", WAVING.back_view(), "from behind, waving")]


@pytest.fixture(scope="module")
def mini_turnaround(mini_studio):
    return mini_studio.turnaround("kai", MINI_VIEWS, seed=1, num_inference_steps=10, compute_score=False)


def test_turnaround_records_each_view_in_its_recipe(mini_studio, mini_turnaround):
    sheet = mini_turnaround
    assert sheet.labels == ["front", "three-quarter", "side", "back", "waving", "back, waving"]
    assert sheet.settings["workflow"] == "turnaround" and sheet.settings["reference_strength"] == 0.5
    assert [v["label"] for v in sheet.settings["views"]] == sheet.labels
    assert [v["custom"] for v in sheet.settings["views"]] == [False] * 4 + [True] * 2
    assert len({r.seed for r in sheet.recipes}) == 1  # the views share the noise
    for view, recipe in zip(resolve_views(MINI_VIEWS), sheet.recipes):
        assert recipe.prompt.endswith(", " + view.words) and recipe.character == "kai"
        assert Pose.from_dict(recipe.pose).isclose(load_pose(view.pose).fit(64, 64), atol=1e-3)
    # each view has its own skeleton
    controls = [np.asarray(c) for c in sheet.control_images]
    assert all((a != b).any() for i, a in enumerate(controls) for b in controls[i + 1:])


def test_mini_draws_each_view_on_its_own_skeleton(mini_turnaround):
    from charstudio.mini.measure import foreground, iou, skeleton_mask

    def overlap(image, view_pose):
        return iou(foreground(image), skeleton_mask(view_pose, 64, 64))

    poses = [Pose.from_dict(r.pose) for r in mini_turnaround.recipes]
    own = [overlap(im, p) for im, p in zip(mini_turnaround.images, poses)]
    assert min(own) >= 0.5, own
    # the profile is drawn narrow and the front wide: each fits its own skeleton better
    front, side = mini_turnaround.images[0], mini_turnaround.images[2]
    assert overlap(side, poses[2]) > overlap(side, poses[0]) + 0.15
    assert overlap(front, poses[0]) > overlap(front, poses[2]) + 0.15


def test_mini_draws_the_raised_right_hand_on_the_other_side_from_behind(mini_turnaround):
    """The character's right hand (where a one-sided accessory would be) is raised: mini draws
    it on the viewer's left from the front and on the viewer's right from behind."""
    from charstudio.mini.measure import foreground

    def filled(image, x: float, y: float) -> float:
        yy, xx = np.mgrid[:64, :64]
        return float(foreground(image)[(xx - x) ** 2 + (yy - y) ** 2 <= 9].mean())

    for image, recipe, expect_side in zip(mini_turnaround.images[4:], mini_turnaround.recipes[4:], (-1, 1)):
        pose = Pose.from_dict(recipe.pose)
        (x, y), neck_x = pose.body[KP["right_wrist"], :2], pose.body[KP["neck"], 0]
        assert np.sign(x - neck_x) == expect_side
        # the hand is drawn where the right wrist is, and nothing at the mirror-image place
        assert filled(image, x, y) >= 0.5 and filled(image, 2 * neck_x - x, y) <= 0.1, recipe.prompt


def test_the_first_view_re_runs_from_its_png(mini_studio, mini_turnaround, tmp_path):
    from charstudio.result import Result

    paths = mini_turnaround.save(tmp_path)
    assert [p.name for p in paths[:2]] == ["00-front.png", "01-three-quarter.png"]
    saved = json.loads((tmp_path / "sheet.json").read_text())
    assert saved["settings"]["views"][3]["words"] == VIEWS["back"].words
    back = Result.from_png(paths[3]).recipe
    assert "from behind" in back.prompt and Pose.from_dict(back.pose).body[KP["nose"], 2] == 0
    # the first view is the reference, drawn as its recipe alone draws it
    again = mini_studio.run(Result.from_png(paths[0]).recipe).images[0]
    assert (np.asarray(again) == np.asarray(mini_turnaround.images[0])).all()


# -- the CLI --------------------------------------------------------------------------------
def test_cli_turnaround(tmp_path, capsys):
    from charstudio.cli import main
    from charstudio.result import Result

    out = tmp_path / "turn"
    args = ["turnaround", "a knight", "--model", "tiny", "--views", "front,back", "--steps", "2", "--width", "32",
            "--height", "32", "--seed", "3", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in printed[:4]] == ["00-front.png", "01-back.png", "grid.png", "sheet.json"]
    sheet = json.loads((out / "sheet.json").read_text())
    assert sheet["labels"] == ["front", "back"] and sheet["settings"]["workflow"] == "turnaround"
    assert Result.from_png(out / "01-back.png").recipe.prompt == "a knight, " + VIEWS["back"].words
    assert main(args) == 2  # refuses to overwrite
    assert "already holds a sheet" in capsys.readouterr().err
    # a typo fails before any model is loaded, and nothing is written
    assert main(["turnaround", "a knight", "--views", "front,bak", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean back" in capsys.readouterr().err and not (tmp_path / "x").exists()
