"""Pose: JSON formats, geometry, rendering against controlnet-aux, the library, detection plumbing."""

from __future__ import annotations

import json
import logging
import math
import warnings

import numpy as np
import pytest

from charstudio.errors import ConfigError, ModelLoadError, OutputError
from charstudio.pose import BODY25_TO_COCO18, COCO18_NAMES, Pose, list_poses, load_pose

REQUIRED = [
    "standing_front", "standing_three_quarter", "standing_side", "standing_back", "walking", "running",
    "sitting", "kneeling", "jumping", "waving", "arms_crossed", "pointing", "hands_on_hips",
    "fighting_stance", "reaching_up", "lying_down",
]
RIGHT_WRIST, LEFT_WRIST = COCO18_NAMES.index("right_wrist"), COCO18_NAMES.index("left_wrist")


def _full_pose(seed: int = 0) -> Pose:
    """A library pose with random (but in-canvas) hands and face, and one missing body point."""
    rng = np.random.default_rng(seed)
    base = load_pose("waving")
    body = base.body.copy()
    body[COCO18_NAMES.index("left_ear")] = 0  # missing point
    w, h = base.canvas_width, base.canvas_height

    def part(n: int) -> np.ndarray:
        pts = np.column_stack([rng.uniform(1, w - 2, n), rng.uniform(1, h - 2, n), rng.uniform(0.2, 1.0, n)])
        pts[3] = 0  # one missing point in every part
        return pts

    return Pose(body=body, hand_left=part(21), hand_right=part(21), face=part(70), canvas_width=w, canvas_height=h)


def _openpose_output(pose: Pose, layout: str = "COCO18", normalise: bool = False) -> dict:
    """What OpenPose itself writes for this pose: no canvas size, optional BODY_25."""
    body = pose.body.copy()
    if normalise:
        body[:, 0] /= pose.canvas_width
        body[:, 1] /= pose.canvas_height
    if layout == "BODY25":
        b25 = np.zeros((25, 3))
        b25[list(BODY25_TO_COCO18)] = body
        b25[8] = (body[8] + body[11]) / 2  # mid-hip
        b25[19:25] = [body[13] + (5, 20, 0)] * 3 + [body[10] + (5, 20, 0)] * 3  # feet
        body = b25
    return {"version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d": body.reshape(-1).tolist(),
                                        "hand_left_keypoints_2d": [], "face_keypoints_2d": []}]}


# -- JSON formats ---------------------------------------------------------------------------------
def test_editor_json_round_trips_with_hands_and_face(tmp_path):
    pose = _full_pose()
    again = Pose.from_dict(json.loads(pose.to_json()))
    assert again.isclose(pose, atol=1e-3)  # the JSON keeps 3 decimals
    path = pose.save(tmp_path / "p.json")
    assert Pose.from_json(path).isclose(pose, atol=1e-3)
    assert load_pose(str(path)).isclose(pose, atol=1e-3)
    assert set(json.loads(path.read_text())) == {"canvas_width", "canvas_height", "people"}
    with pytest.raises(OutputError, match="already exists"):
        pose.save(path)


@pytest.mark.parametrize("layout", ["COCO18", "BODY25"])
def test_openpose_output_reads_in_both_layouts(layout):
    pose = load_pose("walking")
    data = _openpose_output(pose, layout)
    got = Pose.from_dict(data, canvas_width=512, canvas_height=768)
    assert got.isclose(pose)
    assert got.hand_left is None and got.face is None  # empty arrays mean "absent"


def test_openpose_output_without_canvas_infers_it_from_the_extent(caplog):
    pose = load_pose("t_pose")
    with caplog.at_level(logging.INFO, logger="charstudio.pose"):
        got = Pose.from_dict(_openpose_output(pose, "BODY25"))
    assert "inferred" in caplog.text
    x0, y0, x1, y1 = pose.bbox()
    assert (got.canvas_width, got.canvas_height) == (math.ceil(x1 * 1.1), math.ceil(y1 * 1.1))
    assert np.allclose(got.body, pose.body)  # pixels are unchanged, only the canvas is a guess


def test_normalised_coordinates_read_as_pixels():
    pose = load_pose("running")
    editor = pose.to_dict()
    flat = np.array(editor["people"][0]["pose_keypoints_2d"]).reshape(-1, 3)
    flat[:, 0] /= pose.canvas_width
    flat[:, 1] /= pose.canvas_height
    editor["people"][0]["pose_keypoints_2d"] = flat.reshape(-1).tolist()
    assert Pose.from_dict(editor).isclose(pose, atol=1e-3)
    data = _openpose_output(pose, "COCO18", normalise=True)
    assert Pose.from_dict(data, canvas_width=512, canvas_height=768).isclose(pose, atol=1e-3)
    with pytest.raises(ConfigError, match="normalised to 0..1 .* canvas_width= and canvas_height="):
        Pose.from_dict(data)


def test_frames_list_and_people_selection():
    a, b = load_pose("sitting"), load_pose("kneeling")
    frames = [a.to_dict(), b.to_dict()]
    assert Pose.from_dict(frames).isclose(a)
    assert Pose.from_dict(frames, frame=1).isclose(b)
    with pytest.raises(ConfigError, match="frame=2 .*this JSON has 2 frames"):
        Pose.from_dict(frames, frame=2)

    crowd = a.to_dict()
    crowd["people"] = [a.to_dict()["people"][0], b.to_dict()["people"][0], a.to_dict()["people"][0]]
    with pytest.raises(ConfigError, match="has 3 people, choose one with person="):
        Pose.from_dict(crowd)
    assert Pose.from_dict(crowd, person=1).isclose(b)
    with pytest.raises(ConfigError, match="person=3 .*from 0 to 2"):
        Pose.from_dict(crowd, person=3)
    with pytest.raises(ConfigError, match="people=\\[\\] .*no people"):
        Pose.from_dict({"canvas_width": 512, "canvas_height": 512, "people": []})


# -- bad input ------------------------------------------------------------------------------------
def test_wrong_keypoint_array_lengths_are_rejected():
    data = load_pose("standing_front").to_dict()
    data["people"][0]["pose_keypoints_2d"] = data["people"][0]["pose_keypoints_2d"][:51]
    with pytest.raises(ConfigError, match="pose_keypoints_2d='51 numbers' .*54 numbers .*75 numbers"):
        Pose.from_dict(data)
    data = load_pose("standing_front").to_dict()
    data["people"][0]["hand_left_keypoints_2d"] = [1.0] * 60
    with pytest.raises(ConfigError, match="hand_left_keypoints_2d='60 numbers' .*63 numbers"):
        Pose.from_dict(data)
    with pytest.raises(ConfigError, match=r"shape \(18, 3\)"):
        Pose(body=np.zeros((17, 3)), canvas_width=64, canvas_height=64)


def test_nan_coordinates_are_rejected_naming_the_point():
    data = load_pose("standing_front").to_dict()
    data["people"][0]["pose_keypoints_2d"][3 * RIGHT_WRIST] = float("nan")
    with pytest.raises(ConfigError, match=r"pose_keypoints_2d\[right_wrist\].*confidence 0"):
        Pose.from_dict(data)


def test_unknown_pose_name_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        load_pose("standing frnot")
    message = str(err.value)
    assert "did you mean standing_front" in message
    assert all(name in message for name in list_poses())


def test_pose_outside_the_canvas_warns_and_clips(caplog):
    body = load_pose("standing_front").body.copy()
    body[RIGHT_WRIST, :2] = (-40, 300)
    body[LEFT_WRIST, :2] = (600, 900)
    with pytest.warns(UserWarning, match="2 keypoint.* outside its 512x768 canvas.*right_wrist"):
        pose = Pose(body=body, canvas_width=512, canvas_height=768)
    assert "clipped" in caplog.text
    assert pose.body[RIGHT_WRIST, 0] == 0 and pose.body[RIGHT_WRIST, 1] == 300
    assert 511 < pose.body[LEFT_WRIST, 0] < 512 and 767 < pose.body[LEFT_WRIST, 1] < 768
    assert np.asarray(pose.render()).shape == (768, 512, 3)


# -- geometry -------------------------------------------------------------------------------------
def test_mirror_swaps_sides_and_twice_is_identity():
    pose = _full_pose()
    m = pose.mirror()
    w = pose.canvas_width
    # The person's right wrist in the mirror is where the left wrist's reflection is.
    assert m.body[RIGHT_WRIST, 0] == pytest.approx(w - 1e-3 - pose.body[LEFT_WRIST, 0])
    assert m.body[RIGHT_WRIST, 1] == pose.body[LEFT_WRIST, 1]
    assert np.allclose(m.hand_right[:, 1], pose.hand_left[:, 1])
    assert m.face[68, 1] == pose.face[69, 1]  # pupils swap
    assert not m.isclose(pose)
    assert m.mirror().isclose(pose, atol=1e-9)
    # Missing points stay missing (not reflected to the right edge).
    assert m.body[COCO18_NAMES.index("right_ear"), 2] == 0


def test_fit_keeps_aspect_and_centres():
    pose = load_pose("standing_front")  # 512x768 canvas
    fitted = pose.fit(1024, 1024)
    s = 1024 / 768
    expected = pose.body[:, :2] * s + ((1024 - 512 * s) / 2, 0)
    present = pose.present
    assert np.allclose(fitted.body[present, :2], expected[present])
    assert (fitted.canvas_width, fitted.canvas_height) == (1024, 1024)
    landscape = pose.fit(768, 256)
    assert landscape.bbox()[0] > 200 and landscape.bbox()[2] < 768 - 200  # centred, bands at the sides
    assert pose.render(256, 256).size == (256, 256)
    assert pose.render(width=256).size == (256, 384)


def test_scale_and_translate():
    pose = load_pose("standing_front")
    x0, y0, x1, y1 = pose.bbox()
    small = pose.scale(0.5)
    sx0, sy0, sx1, sy1 = small.bbox()
    assert sx1 - sx0 == pytest.approx((x1 - x0) / 2) and (sx0 + sx1) / 2 == pytest.approx((x0 + x1) / 2)
    moved = small.translate(10, -20)
    assert np.allclose(moved.body[small.present, :2], small.body[small.present, :2] + (10, -20))
    with pytest.raises(ConfigError, match="factor=-1"):
        pose.scale(-1)


# -- rendering ------------------------------------------------------------------------------------
def test_rendering_matches_controlnet_aux():
    """Our drawing code against controlnet-aux's draw_bodypose on the same keypoints.

    Both draw the same geometry with whole-pixel truncation. controlnet-aux takes coordinates
    normalised to 0..1 and multiplies back by the size, so a coordinate can come back a
    rounding error below a whole number and truncate one pixel lower: that moves single
    edge pixels of a joint disc or limb. Measured over the library at two sizes, at least
    99.99% of all pixels and 99.8% of drawn pixels agree; a wrong colour, limb order, width or
    radius changes several percent of the drawn pixels, so the thresholds below separate the two.
    """
    from controlnet_aux.open_pose.body import Keypoint
    from controlnet_aux.open_pose.util import draw_bodypose

    for name in list_poses():
        for size in (None, (320, 480)):
            pose = load_pose(name) if size is None else load_pose(name).fit(*size)
            w, h = pose.canvas_width, pose.canvas_height
            keypoints = [Keypoint(x / w, y / h) if c > 0 else None for x, y, c in pose.body]
            ref = draw_bodypose(np.zeros((h, w, 3), np.uint8), keypoints)
            ours = np.asarray(pose.render(hands=False, face=False))
            same = (ref == ours).all(axis=-1)
            drawn = (ref > 0).any(axis=-1) | (ours > 0).any(axis=-1)
            assert same.mean() >= 0.999, (name, size)
            assert same[drawn].mean() >= 0.99, (name, size)

    # Hands and face too (controlnet-aux marks missing hand/face points with negative coordinates).
    from controlnet_aux.open_pose.util import draw_facepose, draw_handpose

    pose = _full_pose()
    w, h = pose.canvas_width, pose.canvas_height

    def keypoints(pts):
        return [Keypoint(x / w, y / h) if c > 0 else Keypoint(-1, -1) for x, y, c in pts]

    ref = draw_bodypose(np.zeros((h, w, 3), np.uint8), [Keypoint(x / w, y / h) if c > 0 else None for x, y, c in pose.body])
    ref = draw_facepose(draw_handpose(draw_handpose(ref, keypoints(pose.hand_left)), keypoints(pose.hand_right)),
                        keypoints(pose.face))
    ours = np.asarray(pose.render())
    same = (ref == ours).all(axis=-1)
    drawn = (ref > 0).any(axis=-1) | (ours > 0).any(axis=-1)
    assert same.mean() >= 0.999 and same[drawn].mean() >= 0.99


def test_render_draws_hands_and_face_only_when_asked():
    pose = _full_pose()
    plain = np.asarray(pose.render(hands=False, face=False))
    full = np.asarray(pose.render())
    assert (full != plain).any(axis=-1).sum() > 500
    assert (np.asarray(Pose(body=pose.body, canvas_width=512, canvas_height=768).render()) == plain).all()


# -- library --------------------------------------------------------------------------------------
def test_library_has_the_required_loadable_poses():
    names = list_poses()
    assert len(names) >= 16 and set(REQUIRED) <= set(names)
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # library poses lie inside their canvas
            pose = load_pose(name)
        assert pose.present.sum() >= 13, name  # a whole figure (back views hide the face)
        assert np.asarray(pose.render(128, 128)).any(), name
    assert load_pose("Standing Front").isclose(load_pose("standing-front"))
    # Left and right are labelled consistently: facing the viewer, the right shoulder is on the image left.
    front = load_pose("standing_front").body
    assert front[COCO18_NAMES.index("right_shoulder"), 0] < front[COCO18_NAMES.index("left_shoulder"), 0]
    back = load_pose("standing_back").body
    assert back[COCO18_NAMES.index("right_shoulder"), 0] > back[COCO18_NAMES.index("left_shoulder"), 0]


# -- detection ------------------------------------------------------------------------------------
class _FakeDetector:
    """Returns controlnet-aux PoseResults with normalised coordinates, as OpenposeDetector does."""

    def __init__(self, results):
        self.results = results
        self.seen = None

    def detect_poses(self, image, include_hand=False, include_face=False):
        self.seen = image
        return self.results


def _pose_result(pose: Pose, score: float):
    from controlnet_aux.open_pose import PoseResult
    from controlnet_aux.open_pose.body import BodyResult, Keypoint

    w, h = pose.canvas_width, pose.canvas_height
    kps = [Keypoint(x / w, y / h) if c > 0 else None for x, y, c in pose.body]
    return PoseResult(BodyResult(kps, score, int(pose.present.sum())), None, None, None)


def test_from_image_converts_detections_to_pixels_and_picks_the_most_confident():
    from PIL import Image

    a, b = load_pose("walking"), load_pose("jumping")
    detector = _FakeDetector([_pose_result(a, 5.0), _pose_result(b, 9.0)])
    image = Image.new("RGB", (512, 768))
    got = Pose.from_image(image, detector=detector)
    assert detector.seen.shape == (768, 512, 3)
    assert np.allclose(got.body[:, :2], b.body[:, :2], atol=1e-3) and (got.present == b.present).all()
    second = Pose.from_image(image, detector=detector, person=1)
    assert np.allclose(second.body[:, :2], a.body[:, :2], atol=1e-3)
    with pytest.raises(ConfigError, match="no person"):
        Pose.from_image(image, detector=_FakeDetector([]))


# The 18 colours with a full channel (levels 0, 128, 255; not white): far apart (>= 128), and a
# dot's edges, blended with the black background by the detector's resizing, match none of them.
_DOT_COLOURS = [c for c in ((r, g, b) for r in (0, 128, 255) for g in (0, 128, 255) for b in (0, 128, 255))
                if 255 in c and c != (255, 255, 255)]


class _DotBodyNetwork:
    """Stands in for OpenPose's body network inside controlnet-aux's real OpenposeDetector (its
    weights cannot be downloaded here), computing its two outputs from the picture it is given:
    joint j's heatmap is a peak at the centre of the picture's dot of colour _DOT_COLOURS[j], and
    each limb's part-affinity field points from one joint's dot to the other's along the limb.
    Everything around it (resizing, padding, peak search, limb matching, people, normalising)
    is the real detector's and charstudio's."""

    def __init__(self):
        import torch

        self.weight = torch.nn.Parameter(torch.zeros(1))  # the detector asks the network for its device

    def parameters(self):
        return iter([self.weight])

    def __call__(self, data):
        import torch

        # (1, 3, H, W): the detector's BGR picture, resized and padded, as x / 256 - 0.5
        rgb = ((data[0].numpy() + 0.5) * 256).transpose(1, 2, 0)[..., ::-1]
        h, w = rgb.shape[0] // 8, rgb.shape[1] // 8
        # an output cell (stride 8) is centred on input pixel 8 * i + 3.5
        gy, gx = np.mgrid[0:h, 0:w] * 8.0 + 3.5
        centres = {}
        for joint, colour in enumerate(_DOT_COLOURS):
            ys, xs = np.nonzero((np.abs(rgb - colour) < 40).all(axis=-1))
            if len(xs):
                centres[joint] = np.array([xs.mean(), ys.mean()])
        heat, paf = np.zeros((19, h, w)), np.zeros((38, h, w))
        for joint, (x, y) in centres.items():
            heat[joint] = np.exp(-((gx - x) ** 2 + (gy - y) ** 2) / (2 * 8.0 ** 2))
        for (a, b), (px_, py_) in zip(_LIMBS, _LIMB_FIELDS):
            if a - 1 in centres and b - 1 in centres:
                start, end = centres[a - 1], centres[b - 1]
                unit = (end - start) / max(np.linalg.norm(end - start), 1e-3)
                rel_x, rel_y = gx - start[0], gy - start[1]
                along = np.clip((rel_x * unit[0] + rel_y * unit[1]) / max(np.linalg.norm(end - start), 1e-3), 0, 1)
                dist = np.hypot(gx - (start[0] + along * (end - start)[0]), gy - (start[1] + along * (end - start)[1]))
                near = dist <= 12.0
                paf[px_ - 19][near], paf[py_ - 19][near] = unit[0], unit[1]
        return (torch.from_numpy(paf[None]).float(), torch.from_numpy(heat[None]).float())


# OpenPose's limbs (1-based joints) and their field channels, as controlnet-aux's body.py lists them.
_LIMBS = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12], [12, 13], [13, 14],
          [2, 1], [1, 15], [15, 17], [1, 16], [16, 18], [3, 17], [6, 18]]
_LIMB_FIELDS = [[31, 32], [39, 40], [33, 34], [35, 36], [41, 42], [43, 44], [19, 20], [21, 22], [23, 24], [25, 26],
                [27, 28], [29, 30], [47, 48], [49, 50], [53, 54], [51, 52], [55, 56], [37, 38], [45, 46]]


def test_from_image_runs_the_real_detector_around_a_picture_reading_network():
    """The real OpenposeDetector, with a stand-in body network that reads coloured dots (see
    _DotBodyNetwork): the pose charstudio returns is the painted figure, in the picture's pixels
    (to a pixel: the detector finds peaks on whole pixels), with the joint left unpainted missing."""
    from controlnet_aux.open_pose import OpenposeDetector
    from controlnet_aux.open_pose.body import Body
    from PIL import Image

    body = Body.__new__(Body)  # Body() would load weights from a file; we have none
    body.model = _DotBodyNetwork()
    detector = OpenposeDetector(body)
    width, height = 192, 288
    painted = load_pose("standing_front").fit(width, height)
    picture = np.zeros((height, width, 3), dtype=np.uint8)
    dropped = COCO18_NAMES.index("left_ear")
    for joint, (x, y, c) in enumerate(painted.body):
        if c > 0 and joint != dropped:
            picture[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2] = _DOT_COLOURS[joint]
    pose = Pose.from_image(Image.fromarray(picture), detector=detector)
    assert (pose.canvas_width, pose.canvas_height) == (width, height)
    expected = painted.present.copy()
    expected[dropped] = False
    assert (pose.present == expected).all()
    err = np.abs(pose.body[expected, :2] - np.round(painted.body[expected, :2]))
    assert err.max() <= 1.5  # measured: 1 px in x, 0 in y
    with pytest.raises(ConfigError, match="no person"):  # a picture without dots has nobody in it
        Pose.from_image(Image.fromarray(np.zeros_like(picture)), detector=detector)


def test_from_image_with_the_real_weights_gives_the_detectors_most_confident_person():
    """With OpenPose's real weights, where they are on disk (this machine cannot download them, and
    whether they find a figure in a given picture is theirs to answer, not charstudio's): the pose is
    the detector's own most confident answer in the picture's pixels."""
    from controlnet_aux.open_pose import OpenposeDetector

    from charstudio.pose import load_detector

    try:
        detector = load_detector()
    except ModelLoadError as err:
        pytest.skip(f"the OpenPose body weights are not available here: {err}")
    assert isinstance(detector, OpenposeDetector)
    image = load_pose("standing_front").render(192, 288)
    answers = detector.detect_poses(np.asarray(image))
    if not answers:
        pytest.skip("the real detector finds no person in a drawn skeleton on this installation")
    best = max(answers, key=lambda r: float(r.body.total_score))
    pose = Pose.from_image(image, detector=detector)
    for kp, (x, y, c) in zip(best.body.keypoints, pose.body):
        assert (kp is None) == (c == 0)
        if kp is not None:
            assert (x, y) == pytest.approx((kp.x * 192, kp.y * 288))


def test_from_image_without_weights_says_where_it_looked(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = Image.new("RGB", (64, 64))
    with pytest.raises(ModelLoadError, match="no local folder was given .*HF_HUB_OFFLINE=1.*body_pose_model.pth"):
        Pose.from_image(image)
    with pytest.raises(ModelLoadError, match="has no body_pose_model.pth"):
        Pose.from_image(image, weights=tmp_path)


def test_thick_lines_for_xinsirs_controlnets_grow_with_the_picture():
    """"thick" draws limbs and joints 4 px times xinsir's size factor (1 below 500 px a side, then
    2, 3 ... up to 7); "standard" stays controlnet-aux's width (checked above). A studio picks
    thick for xinsir's ControlNets, the recipe keeps the choice, and the control image follows it."""
    from charstudio import Studio
    from charstudio.errors import ConfigError
    from charstudio.pose.drawing import limb_scale

    assert [limb_scale(s, s, "thick") for s in (256, 499, 500, 832, 1024, 1216, 2048, 9000)] == [1, 1, 2, 2, 3, 3, 4, 7]
    assert limb_scale(1024, 1024, "standard") == 1
    pose = load_pose("walking")
    standard = (np.asarray(pose.render(1024, 1024, hands=False, face=False)) > 0).any(-1).sum()
    thick = (np.asarray(pose.render(1024, 1024, hands=False, face=False, lines="thick")) > 0).any(-1).sum()
    assert 2.2 < thick / standard < 3.2  # three times the width, a little less at the limb ends
    small = [np.asarray(pose.render(256, 256, lines=lines)) for lines in ("standard", "thick")]
    assert np.array_equal(*small)  # below 500 px both are the same
    with pytest.raises(ConfigError, match="lines"):
        pose.render(64, 64, lines="bold")

    studio = Studio.from_pretrained("tiny", device="cpu")
    assert studio.make_config("a knight", pose="walking").pose_lines == "standard"
    studio.controlnet_source = "xinsir/controlnet-openpose-sdxl-1.0"
    config = studio.make_config("a knight", pose="walking", width=512, height=512)
    assert config.pose_lines == "thick"
    assert np.array_equal(np.asarray(studio.render_pose(config)), np.asarray(pose.fit(512, 512).render(512, 512, lines="thick")))
    assert studio.make_config("a knight", pose="walking", pose_lines="standard").pose_lines == "standard"
