"""Labelled grids: a label stays under its own picture, however small the picture (mini's 64 px)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from charstudio.imaging import fit_label, image_grid


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
    # Nothing is lost silently: a label too long for its cell is cut and says so.
    cut = fit_label("x" * 80, 62, lambda s: 6 * len(s))
    assert cut.endswith("...") and 6 * len(cut) <= 62
    assert fit_label("walking", 62, lambda s: 6 * len(s)) == "walking"


def test_labels_fit_their_cell_on_one_line():
    """The quickstart sheet's grid wrapped 'standing_front' onto two lines ('standing_' / 'front')
    under mini's 64 px pictures; each label is now one line as wide as its cell at most."""
    from charstudio.imaging import LABEL_LINE_HEIGHT, fit_labels

    images = [Image.new("RGB", (64, 64), (200, 220, 240)) for _ in range(4)]
    labels = ["standing_front", "walking", "waving", "standing_three_quarter"]
    grid = np.asarray(image_grid(images, cols=4, labels=labels, pad=4))
    assert grid.shape[0] == 4 + 64 + LABEL_LINE_HEIGHT + 2 + 4  # one line of labels
    ink = (grid < 128).all(axis=2)[4 + 64:]
    for c in range(4):
        x = 4 + c * 68
        cols = np.flatnonzero(ink[:, x:x + 68].any(axis=0))
        assert cols.size and cols.max() < 64, f"label {labels[c]!r} is wider than its 64 px cell"
    font, lines = fit_labels(labels, 62)
    assert lines[0] == "standing_front"  # fits whole, in a smaller font
    assert lines[3].endswith("...") and lines[3].startswith("standing_")  # too long even then: cut, marked
