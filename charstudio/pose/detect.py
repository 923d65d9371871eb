"""Building controlnet-aux's OpenPose detector from a local folder or the hub, and reading its keypoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from charstudio.errors import ConfigError, ModelLoadError

from .keypoints import N_BODY, N_FACE, N_HAND

DEFAULT_DETECTOR_REPO = "lllyasviel/Annotators"


def load_detector(weights: str | Path | None = None, *, hands: bool = False, face: bool = False):
    """Build controlnet-aux's OpenposeDetector from a local folder or a hub repo id.

    Only the parts asked for are loaded (the body model always). The ``.pth`` files are loaded
    by controlnet-aux with ``torch.load``, which in torch >= 2.6 defaults to ``weights_only=True``
    (no arbitrary unpickling).
    """

    try:
        from controlnet_aux.open_pose import OpenposeDetector
        from controlnet_aux.open_pose.body import Body
        from controlnet_aux.open_pose.face import Face
        from controlnet_aux.open_pose.hand import Hand
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ModelLoadError(f"pose detection needs controlnet-aux (and torchvision): {err}") from err

    files = {"body": "body_pose_model.pth", "hand": "hand_pose_model.pth", "face": "facenet.pth"}
    wanted = ["body"] + (["hand"] if hands else []) + (["face"] if face else [])
    paths: dict[str, str] = {}
    if weights is not None and Path(weights).is_dir():
        folder = Path(weights)
        for part in wanted:
            candidates = [folder / files[part], folder / "annotator" / "ckpts" / files[part]]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise ModelLoadError(f"OpenPose {part} weights not found: the folder {folder} has no {files[part]} "
                                     f"(looked at {', '.join(str(c) for c in candidates)})")
            paths[part] = str(found)
    else:
        from huggingface_hub import hf_hub_download

        repo = str(weights) if weights is not None else DEFAULT_DETECTOR_REPO
        from ..models.loading import hub_offline

        offline = hub_offline()
        for part in wanted:
            try:
                paths[part] = hf_hub_download(repo, files[part], local_files_only=offline)
            except Exception as err:  # hub errors come in many classes; all mean "not available"
                where = "the hub is switched off (HF_HUB_OFFLINE=1) and " if offline else ""
                raise ModelLoadError(
                    f"OpenPose {part} weights are not available: no local folder was given "
                    f"(weights={str(weights) if weights is not None else None!r}) and {where}{repo}/{files[part]} "
                    f"could not be downloaded or found in the cache ({type(err).__name__}). Download it once, or pass "
                    f"weights='path/to/folder' holding {files[part]}."
                ) from None
    return OpenposeDetector(
        Body(paths["body"]),
        Hand(paths["hand"]) if hands else None,
        Face(paths["face"]) if face else None,
    )


def detect_keypoints(image: Any, detector: Any = None, weights: str | Path | None = None, *,
                     person: int | None = None, hands: bool = False,
                     face: bool = False) -> tuple[dict[str, np.ndarray | None], int, int]:
    """One detected person's keypoint arrays in pixels of ``image``, and its width and height
    (the rules are `Pose.from_image`'s, which wraps this)."""
    from PIL import Image

    from ..io_utils import open_image

    if isinstance(image, (str, Path, bytes)):
        image = open_image(image, "image")
    if not isinstance(image, Image.Image):
        raise ConfigError("image", type(image).__name__, "a PIL image or a path to an image file")
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    if detector is None:
        detector = load_detector(weights, hands=hands, face=face)
    results = detector.detect_poses(rgb, include_hand=hands, include_face=face)
    if not results:
        raise ConfigError("image", f"{w}x{h} image", "a picture with a visible person: the detector found no person")
    # Most confident person first, so person=0 is "the main subject".
    results = sorted(results, key=lambda r: -float(r.body.total_score))
    index = 0 if person is None else person
    if not isinstance(index, int) or not 0 <= index < len(results):
        raise ConfigError("person", person, f"an index from 0 to {len(results) - 1}; {len(results)} people were found")
    found = results[index]

    def to_pixels(points, n: int) -> np.ndarray | None:
        if points is None:
            return None
        arr = np.zeros((n, 3))
        for i, kp in enumerate(points[:n]):
            # controlnet-aux marks undetected hand/face points with negative coordinates.
            if kp is not None and kp.x >= 0 and kp.y >= 0:
                arr[i] = (kp.x * w, kp.y * h, max(float(getattr(kp, "score", 1.0)), 1e-3))
        return arr

    parts = {"body": to_pixels(found.body.keypoints, N_BODY), "hand_left": to_pixels(found.left_hand, N_HAND),
             "hand_right": to_pixels(found.right_hand, N_HAND), "face": to_pixels(found.face, N_FACE)}
    return parts, w, h
