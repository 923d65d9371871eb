"""Building controlnet-aux's OpenPose detector from a local folder or the hub."""

from __future__ import annotations

from pathlib import Path

from charstudio.errors import ModelLoadError

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
