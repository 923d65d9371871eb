"""What the passes share: whether a pipeline takes CFG rescale, and a picture's pose.

The hires fix, the detail pass and inpainting each ask these; they live here, not in one of
those modules, so that no runner imports another (see `charstudio.workflows.run`, which owns
their order).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)


def supported_rescale(studio: Studio, kind: str, value: float) -> float:
    """``value``, or 0 when the pipeline of ``kind`` has no CFG rescale (diffusers' SD 1.x img2img
    pipelines; a v-prediction model's recipe asks for 0.7 by default)."""
    import inspect

    if value and "guidance_rescale" not in inspect.signature(studio.pipeline(kind).__call__).parameters:
        log.info("%s has no CFG rescale: guidance_rescale %.2f -> 0", kind, value)
        return 0.0
    return value


def picture_pose(image: Any, pose: Any = None, detector: Any = None) -> Any:
    """The pose of a picture: the one it was drawn with (a Pose, a group or pose-editor JSON,
    fitted to the picture by `masks.region_boxes`), else the OpenPose detector's
    (`Pose.from_image`; ``detector`` as it takes)."""
    from ..pose import Pose

    return pose if pose is not None else Pose.from_image(image, detector=detector)
