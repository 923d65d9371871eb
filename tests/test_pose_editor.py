"""The pose editor: its pure operations (charstudio.pose.edit), the user's pose library, and the
widget driven headless as the browser drives it (model state set, the same custom messages sent),
up to the Explore app drawing a character in an edited and saved pose."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from charstudio.errors import ConfigError, OutputError
from charstudio.pose import Pose, list_poses, load_pose, save_pose, user_pose_dir
from charstudio.pose import edit
from charstudio.pose.compose import PoseGroup, load_people, side_by_side

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")

R_SHOULDER, R_ELBOW, R_WRIST, L_WRIST = 2, 3, 4, 7


@pytest.fixture(autouse=True)
def pose_dir(tmp_path, monkeypatch):
    """Every test's own user pose library (never the real ~/.charstudio/poses)."""
    folder = tmp_path / "my_poses"
    monkeypatch.setenv("CHARSTUDIO_POSE_DIR", str(folder))
    return folder


def browser_sends(widget, content):
    """What the browser's `model.send(content)` delivers to the kernel (ipywidgets' custom message)."""
    widget._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})


def browser_sets(widget, **state):
    """What the browser's `model.set(...); model.save_changes()` delivers (a state update)."""
    widget._handle_msg({"content": {"data": {"method": "update", "state": state}}, "buffers": []})


def body(editor, person=0):
    return np.array(editor.canvas.people[person]["body"])


# -- the pure operations -------------------------------------------------------------------------------
def test_move_joint_moves_that_joint_its_hand_follows_and_the_border_stops_it():
    start = load_pose("standing_front").copy()
    hand = np.zeros((21, 3))
    hand[:, :2], hand[:, 2] = start.body[R_WRIST, :2] + np.arange(21)[:, None], 1.0
    group = edit.as_group(Pose(start.body, start.canvas_width, start.canvas_height, hand_right=hand))
    moved = edit.move_joint(group, 0, "right_wrist", 150.0, 100.0)
    after = moved.people[0]
    assert tuple(after.body[R_WRIST]) == (150.0, 100.0, 1.0)
    others = [j for j in range(18) if j != R_WRIST]
    assert np.array_equal(after.body[others], start.body[others])  # nothing else moved
    shift = np.array([150.0, 100.0]) - start.body[R_WRIST, :2]
    assert np.allclose(after.hand_right[:, :2], hand[:, :2] + shift)  # the hand went with its wrist
    assert np.array_equal(group.people[0].body, start.body)  # the input is unchanged
    # Past the canvas: stops at the border.
    edge = edit.move_joint(group, 0, R_ELBOW, -50, 10_000).people[0].body[R_ELBOW]
    assert edge[0] == 0.0 and start.canvas_height - 1 < edge[1] < start.canvas_height
    # A missing joint is placed (present from then on).
    gap = Pose(np.where(np.arange(18)[:, None] == R_ELBOW, 0.0, start.body), 512, 768)
    placed = edit.move_joint(edit.as_group(gap), 0, R_ELBOW, 60, 70).people[0].body[R_ELBOW]
    assert tuple(placed) == (60.0, 70.0, 1.0)


def test_bad_joint_or_person_is_a_clear_error():
    group = edit.as_group("standing_front")
    with pytest.raises(ConfigError, match=r"joint=18 .*0 to 17 or a name: nose, neck"):
        edit.move_joint(group, 0, 18, 10, 10)
    with pytest.raises(ConfigError, match="joint='wrist'"):
        edit.move_joint(group, 0, "wrist", 10, 10)
    with pytest.raises(ConfigError, match=r"person=1 .*from 0 to 0: this pose has 1 person"):
        edit.mirror(group, 1)
    with pytest.raises(ConfigError, match="x=nan"):
        edit.move_joint(group, 0, 1, float("nan"), 10)
    with pytest.raises(ConfigError, match="factor=0"):
        edit.scale(group, 0, 0)


def test_mirror_flips_the_person_in_place_and_swaps_left_and_right():
    group = edit.as_group("waving")
    pose = group.people[0]
    flipped = edit.mirror(group, 0).people[0]
    assert np.allclose(flipped.bbox(), pose.bbox())  # it stays where it was
    x0, _, x1, _ = pose.bbox()
    # The raised (right) wrist is now the left wrist, reflected about the middle of the box.
    assert np.allclose(flipped.body[L_WRIST, :2], [x0 + x1 - pose.body[R_WRIST, 0], pose.body[R_WRIST, 1]])
    assert edit.mirror(edit.mirror(group, 0), 0).people[0].isclose(pose, atol=1e-6)


def test_rotate_scale_and_translate_the_whole_figure():
    group = edit.as_group("standing_front")
    pose = group.people[0]
    x0, y0, x1, y1 = pose.bbox()
    c = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    small = edit.scale(group, 0, 0.5)  # fits, so nothing is clipped and the quarter turn stays exact
    turned = edit.rotate(small, 0, 90).people[0]
    # About the mean of the points, clockwise on screen (y down): a point right of it goes below it.
    m = small.people[0].body[:, :2].mean(axis=0)
    v = small.people[0].body[1, :2] - m
    assert np.allclose(turned.body[1, :2] - m, [-v[1], v[0]], atol=1e-6)
    assert edit.rotate(edit.rotate(group, 0, 30), 0, -30).people[0].isclose(pose, atol=1e-6)
    assert np.allclose(small.people[0].bbox(), [c[0] - (c[0] - x0) / 2, c[1] - (c[1] - y0) / 2,
                                                c[0] + (x1 - c[0]) / 2, c[1] + (y1 - c[1]) / 2])
    moved = edit.translate(group, 0, 10, -20).people[0]
    assert np.allclose(moved.body[:, :2], pose.body[:, :2] + [10, -20])
    # Pushed past the edge, the figure stops there whole (its shape kept, nothing squashed).
    far = edit.translate(group, 0, 10_000, 0).people[0]
    assert far.bbox()[2] == pytest.approx(pose.canvas_width - 1e-3)
    assert np.allclose(np.diff(far.body[:, :2], axis=0), np.diff(pose.body[:, :2], axis=0))


def test_add_and_delete_a_person():
    group = edit.as_group("standing_front")
    two = edit.add_person(group, "waving")
    assert len(two.people) == 2 and two.people[0].isclose(group.people[0])
    first, second = two.people[0].bbox(), two.people[1].bbox()
    assert second[0] >= first[2] or second[2] <= first[0], "the newcomer overlaps the first person"
    three = edit.add_person(two)  # a copy of the last person
    assert len(three.people) == 3
    one = edit.delete_person(two, 0)
    assert len(one.people) == 1 and one.people[0].isclose(two.people[1])
    with pytest.raises(ConfigError, match="a pose keeps at least one person"):
        edit.delete_person(one, 0)
    with pytest.raises(ConfigError, match="one person's pose to add"):
        edit.add_person(group, side_by_side("standing_front", "waving"))


def test_history_undoes_several_steps_redoes_and_a_failed_edit_changes_nothing():
    history = edit.EditHistory("standing_front", limit=3)
    states = [history.current]
    for degrees in (10, 20, 30, 40):
        states.append(history.apply(edit.rotate, 0, degrees))
    with pytest.raises(ConfigError):
        history.apply(edit.move_joint, 0, 99, 1, 1)
    assert history.current is states[-1]
    for expected in (states[3], states[2], states[1]):  # three levels (the limit)
        assert history.undo() is expected
    assert not history.can_undo
    with pytest.raises(ConfigError, match="undo"):
        history.undo()
    assert history.redo() is states[2]
    history.apply(edit.mirror, 0)
    assert not history.can_redo  # a new edit drops what was undone


# -- the user's pose library ----------------------------------------------------------------------------
def test_save_pose_writes_the_library_folder_and_the_library_reads_it(pose_dir):
    pose = edit.move_joint(edit.as_group("standing_front"), 0, R_WRIST, 150, 100).people[0]
    path = save_pose(pose, "Arm Up")
    assert path == pose_dir / "arm_up.json" and user_pose_dir() == pose_dir
    assert json.loads(path.read_text())["people"][0]["pose_keypoints_2d"][3 * R_WRIST:3 * R_WRIST + 2] == [150, 100]
    assert "arm_up" in list_poses() and load_pose("arm up") == pose
    with pytest.raises(OutputError, match="already exists"):
        save_pose(load_pose("waving"), "arm_up")
    assert load_pose("arm_up") == pose  # refused: the file is as it was
    save_pose(load_pose("waving"), "arm_up", overwrite=True)
    assert load_pose("arm_up") == load_pose("waving")
    with pytest.raises(ConfigError, match="no shipped pose has"):
        save_pose(pose, "waving")
    with pytest.raises(ConfigError, match="name='../x'"):
        save_pose(pose, "../x")
    group = side_by_side("standing_front", "waving")
    save_pose(group, "duo")
    loaded = load_people("duo")
    assert isinstance(loaded, PoseGroup) and len(loaded.people) == 2
    assert all(a.isclose(b, atol=1e-3) for a, b in zip(loaded.people, group.people))


def test_the_default_library_folder_is_under_the_home(monkeypatch, tmp_path):
    monkeypatch.delenv("CHARSTUDIO_POSE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_pose_dir() == tmp_path / ".charstudio" / "poses"


# -- the widget, driven as the browser drives it -----------------------------------------------------------
@pytest.fixture
def editor():
    from charstudio.ui.pose_editor import PoseEditor

    return PoseEditor("standing_front")


def test_a_drag_from_the_browser_moves_the_joint_and_redraws_the_control_image(editor):
    before_image = editor.control.value
    start = body(editor)
    browser_sends(editor.canvas, {"event": "move_joint", "person": 0, "joint": R_WRIST, "x": 150.5, "y": 90.25})
    after = body(editor)
    assert tuple(after[R_WRIST]) == (150.5, 90.25, 1.0)
    assert np.array_equal(np.delete(after, R_WRIST, 0), np.delete(start, R_WRIST, 0))
    assert editor.pose().body[R_WRIST, :2].tolist() == [150.5, 90.25]
    assert editor.control.value != before_image
    editor.undo_button.click()
    assert np.array_equal(body(editor), start) and editor.control.value == before_image


def test_a_bad_message_is_a_status_error_and_changes_nothing(editor):
    start = body(editor)
    browser_sends(editor.canvas, {"event": "move_joint", "person": 0, "joint": 40, "x": 1, "y": 1})
    assert editor.status.level == "error" and "joint=40" in editor.status.text
    browser_sends(editor.canvas, {"event": "teleport"})
    assert editor.status.level == "error" and "event" in editor.status.text
    assert np.array_equal(body(editor), start) and not editor.history.can_undo
    with pytest.raises(ConfigError, match="joint=40"):
        editor.move_joint(0, 40, 1, 1)


def test_the_buttons_act_on_the_selected_person_and_undo_goes_back_step_by_step(editor):
    editor.add_button.click()
    assert len(editor.canvas.people) == 2 and editor.canvas.selected == 1
    assert [v for _, v in editor.person.options] == [0, 1]
    browser_sets(editor.canvas, selected=0)  # the user pressed the first person on the canvas
    first, second = body(editor, 0), body(editor, 1)
    editor.rotate_right.click()
    assert not np.array_equal(body(editor, 0), first) and np.array_equal(body(editor, 1), second)
    editor.mirror_button.click()
    editor.bigger.click()
    browser_sends(editor.canvas, {"event": "translate", "person": 1, "dx": -5, "dy": 7})
    assert np.allclose(body(editor, 1)[:, :2], second[:, :2] + [-5, 7])
    for _ in range(4):
        editor.undo_button.click()
    assert np.array_equal(body(editor, 0), first) and len(editor.canvas.people) == 2
    editor.redo_button.click()
    assert not np.array_equal(body(editor, 0), first)
    editor.person.value = 1
    editor.delete_button.click()
    assert len(editor.canvas.people) == 1 and editor.delete_button.disabled
    assert isinstance(editor.pose(), Pose)


def test_the_control_image_in_both_line_styles(editor):
    standard = editor.control.value
    editor.lines.value = "thick"  # xinsir's SDXL ControlNets: wider limbs on a 512 px canvas
    assert editor.control.value != standard
    thick = np.asarray(editor.control_image(), dtype=int)
    assert (thick.sum(-1) > 0).sum() > (np.asarray(editor.control_image("standard")).sum(-1) > 0).sum()
    assert editor.control_image().size == (512, 768)  # the canvas the model sees


def test_save_button_writes_json_that_loads_back_and_refuses_an_existing_name(editor, pose_dir):
    saved = []
    editor.on_save = lambda name, path: saved.append((name, path))
    browser_sends(editor.canvas, {"event": "move_joint", "person": 0, "joint": R_WRIST, "x": 150, "y": 100})
    editor.name.value = "arm up"
    editor.save_button.click()
    path = pose_dir / "arm_up.json"
    assert editor.status.level == "ok" and saved == [("arm_up", path)]
    assert load_pose("arm_up") == editor.pose() and "arm_up" in list_poses()
    assert "arm_up" in editor.library.options
    before = path.read_bytes()
    browser_sends(editor.canvas, {"event": "move_joint", "person": 0, "joint": R_WRIST, "x": 20, "y": 30})
    editor.save_button.click()
    assert editor.status.level == "error" and "already exists" in editor.status.text
    assert path.read_bytes() == before
    editor.overwrite.value = True
    editor.save_button.click()
    assert load_pose("arm_up").body[R_WRIST, :2].tolist() == [20, 30]


def test_start_from_a_png_recipe_and_from_the_library(editor, tmp_path):
    from charstudio.config import GenerationConfig
    from charstudio.result import Result

    pose = load_pose("jumping").fit(64, 96)
    config = GenerationConfig(prompt="a jump", model="tiny", seed=5, width=64, height=96, pose=pose.to_dict())
    [png] = Result([Image.new("RGB", (64, 96), (200, 30, 30))], [config]).save(tmp_path)
    editor.load_file(png.name, png.read_bytes())
    assert editor.status.level == "ok", editor.status.text
    assert (editor.canvas.canvas_width, editor.canvas.canvas_height) == (64, 96)
    assert np.allclose(body(editor), pose.body, atol=1e-3)
    assert editor.canvas.background.startswith("data:image/png;base64,")  # the picture behind the skeleton
    # A PNG with no pose in its recipe is a clear error.
    no_pose = Result([Image.new("RGB", (8, 8))], [GenerationConfig(prompt="x", width=8, height=8)]).save(tmp_path)[0]
    editor.load_png(png)
    with pytest.raises(ConfigError, match="a PNG whose recipe has a pose"):
        editor.load_png(no_pose)
    editor.library.value = "sitting"
    editor.load_button.click()
    assert np.allclose(body(editor), load_pose("sitting").body)
    editor.undo_button.click()  # back to the PNG's pose
    assert np.allclose(body(editor), pose.body, atol=1e-3)


def test_start_from_a_picture_through_the_detector():
    from helpers import Detector, paint_pose

    from charstudio.ui.pose_editor import PoseEditor

    picture, expected = paint_pose(Image.new("RGB", (96, 128)), load_pose("waving").fit(96, 128))
    editor = PoseEditor("standing_front", detector=Detector(people=1))
    editor.load_file("photo.jpg", _png(picture))
    assert editor.status.level == "ok", editor.status.text
    assert np.allclose(body(editor), expected.body, atol=0.5)
    assert editor.canvas.background


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_the_browser_module_speaks_the_documented_contract():
    from charstudio.ui import pose_editor

    js = (Path(pose_editor.__file__).parent / "static" / "pose_editor.js").read_text()
    for hook in ('"cs-pose-canvas"', "dataset.joints", 'event: "move_joint"', 'event: "translate"',
                 'model.set("selected"'):
        assert hook in js, hook
    for hook in ("cs-pose-canvas", "data-joints", "move_joint", "translate", "CHARSTUDIO_POSE_DIR"):
        assert hook in pose_editor.__doc__, hook


# -- the done-means path: notebook 01's app ------------------------------------------------------------------
def test_explore_edit_pull_an_arm_up_save_and_generate_in_it(tiny_studio, run_spy, tmp_path, pose_dir):
    from charstudio.ui.explore import ExploreApp

    app = ExploreApp(tiny_studio, steps=2, output_dir=str(tmp_path / "out"))
    app.width.value = app.height.value = 64
    app.card.value = "rin"
    app.select_poses(["standing_front"])
    app.poses.edit_button.click()
    editor = app.poses.editor
    assert editor.widget in app.poses.editor_box.children
    shoulder = body(editor)[R_SHOULDER]
    browser_sends(editor.canvas, {"event": "move_joint", "person": 0, "joint": R_WRIST,
                                  "x": shoulder[0], "y": shoulder[1] - 150})  # the arm straight up
    editor.name.value = "arm up"
    editor.save_button.click()
    assert (pose_dir / "arm_up.json").is_file() and app.pose_order == ["arm_up"], app.status.text
    app.generate_button.click()
    assert app.wait(120) and app.status.level == "ok", app.status.text
    drawn = Pose.from_dict(run_spy[-1][0].pose)
    assert drawn.isclose(editor.pose().fit(64, 64), atol=1e-2)
    assert drawn.body[R_WRIST, 1] < drawn.body[R_SHOULDER, 1]  # the wrist above the shoulder
    # "Use this pose" without saving: the edited pose, selected alone, is what Generate draws.
    editor.mirror_button.click()
    editor.use_button.click()
    assert app.pose_order == ["edited"]
    app.generate_button.click()
    assert app.wait(120) and app.status.level == "ok", app.status.text
    assert Pose.from_dict(run_spy[-1][0].pose).isclose(editor.pose().fit(64, 64), atol=1e-2)
    # A new app lists the saved pose among the library's thumbnails.
    assert "arm_up" in ExploreApp(tiny_studio).pose_buttons
