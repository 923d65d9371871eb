"""Labelled grids: a label stays under its own picture, however small the picture (mini's 64 px)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from charstudio.imaging import LABEL_MAX_LINES, fit_label, image_grid


def test_labels_never_run_into_the_next_cell():
    images = [Image.new("RGB", (64, 64), (240, 220, 150)) for _ in range(4)]
    labels = ["standing_front", "walking", "arms_crossed_over_the_chest_and_more", "x" * 80]
    grid = np.asarray(image_grid(images, cols=4, labels=labels, pad=4))
    ink = (grid < 128).all(axis=2)  # the labels are drawn in black on white
    below = ink[4 + 64:]
    assert below.any()
    for c in range(4):
        x = 4 + c * 68
        assert not below[:, x + 64:x + 68].any(), f"label {c} spills into the gap after its picture"
    # Nothing is lost silently: long labels wrap, the last line says it was cut.
    assert fit_label("standing_front", 62, lambda s: 6 * len(s)) == ["standing_", "front"]
    cut = fit_label("x" * 80, 62, lambda s: 6 * len(s))
    assert len(cut) == LABEL_MAX_LINES and cut[-1].endswith("...")
    assert fit_label("walking", 62, lambda s: 6 * len(s)) == ["walking"]
