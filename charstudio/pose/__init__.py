"""Poses as data: OpenPose COCO-18 keypoints, JSON I/O, geometry, rendering, library, detection.

A `Pose` holds one person's body keypoints in pixels of its canvas, in the COCO-18 order the
OpenPose ControlNet was trained on, plus optional hands (2 x 21 points) and face (70 points).
Each keypoint is (x, y, confidence); confidence 0 means "missing" (OpenPose writes missing
points as 0, 0, 0, and so do we).

Every Pose lies inside its canvas: points outside are clipped to the border with a warning,
because the ControlNet cannot see them anyway and a silently shifted limb is easier to spot
in the warning than in the picture.

Reading (`Pose.from_dict`, `Pose.from_json`, `load_pose`) accepts:
  * OpenPose's own output ``{"version", "people": [{"pose_keypoints_2d": [...]}]}`` in the
    COCO-18 (54 numbers) or BODY_25 (75 numbers) layout. It stores no canvas size: pass
    ``canvas_width``/``canvas_height`` (the size of the image it was detected on). Without them
    the canvas is inferred from the keypoints' extent (the largest x and y plus 10%), which
    keeps every point inside but is not the original image size; that case is logged.
  * the sd-webui-openpose-editor / ComfyUI pose-editor JSON (``canvas_width``,
    ``canvas_height``, ``people``), or a list of such frames (choose with ``frame=``).
  * coordinates in pixels or normalised to 0..1. With ``normalized=None`` (the default) a
    person whose present coordinates all lie within 0..1 is taken as normalised; pass
    ``normalized=True/False`` to say so explicitly. Normalised input needs a canvas size.

Writing (`Pose.to_dict`, `Pose.save`) produces the editor format, in pixels.

Where things live: ``skeleton`` (the Pose: geometry, and the methods that read, write, draw
and detect it), ``keypoints`` (the keypoint layouts and their check), ``pose_json`` (reading
and writing the JSON), ``drawing`` (rendering in the ControlNet's conventions), ``library``
(the shipped poses, the user's own in $CHARSTUDIO_POSE_DIR or ``~/.charstudio/poses``, and
``NAME.pose.json`` files), ``compose`` (several people on one canvas), ``edit`` (the pose editor's
operations: drag a joint, mirror, rotate, scale, move, add or delete a person, undo) and ``detect``
(controlnet-aux's OpenPose detector).
"""

from .detect import DEFAULT_DETECTOR_REPO, load_detector
from .drawing import LIMBS, draw_body, draw_face, draw_hand
from .library import POSE_DIR_ENV, POSE_SUFFIX, list_poses, load_pose, pose_file, save_pose, user_pose_dir
from .keypoints import BODY25_TO_COCO18, COCO18_NAMES, N_BODY, N_FACE, N_HAND
from .skeleton import Pose, PoseLike

__all__ = [
    "BODY25_TO_COCO18",
    "COCO18_NAMES",
    "DEFAULT_DETECTOR_REPO",
    "LIMBS",
    "N_BODY",
    "N_FACE",
    "N_HAND",
    "POSE_DIR_ENV",
    "POSE_SUFFIX",
    "Pose",
    "PoseLike",
    "draw_body",
    "draw_face",
    "draw_hand",
    "list_poses",
    "load_detector",
    "load_pose",
    "pose_file",
    "save_pose",
    "user_pose_dir",
]
