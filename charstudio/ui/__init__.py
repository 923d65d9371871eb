"""ipywidgets front ends, one app per notebook. The core never imports this package.

    from charstudio.ui import ExploreApp
    app = ExploreApp(model="mini"); app

    from charstudio.ui import PoseEditor      # the pose editor on its own (the Explore app opens it too)
    PoseEditor("standing_front")
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExploreApp": "charstudio.ui.explore",
    "TrainApp": "charstudio.ui.train",
    "InterpolateApp": "charstudio.ui.interpolate",
    "ProcessApp": "charstudio.ui.process",
    "WorkflowsApp": "charstudio.ui.workflows",
    "StoryboardApp": "charstudio.ui.storyboard",
    "PoseEditor": "charstudio.ui.pose_editor",
    "Gallery": "charstudio.ui.common",
    "Runner": "charstudio.ui.common",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'charstudio.ui' has no attribute {name!r}")
