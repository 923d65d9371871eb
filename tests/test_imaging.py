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


def test_notes_are_a_second_line_in_their_own_colour():
    """A sheet's identity scores sit under the labels, red where a picture drifted."""
    cells = [Image.new("RGB", (64, 64), (255, 255, 255)) for _ in range(2)]
    plain = image_grid(cells, cols=2, labels=["front", "back"])
    noted = image_grid(cells, cols=2, labels=["front", "back"], notes=["mini anchor", "mini 0.58 low"],
                       note_colours=[(0, 0, 0), (200, 0, 0)])
    assert noted.height > plain.height
    arr = np.asarray(noted).astype(int)
    note_rows = arr[plain.height - 4:]  # below the labels' line
    red = (note_rows[..., 0] > 150) & (note_rows[..., 1] < 80) & (note_rows[..., 2] < 80)
    left, right = red[:, : noted.width // 2], red[:, noted.width // 2:]
    assert right.sum() > 10 and left.sum() == 0  # only the drifting picture's note is red
    dark = note_rows.sum(-1) < 200
    assert dark[:, : noted.width // 2].sum() > 10  # the anchor's note is drawn, in black


def test_a_sheet_grid_shows_each_pictures_identity_score(mini_studio):
    sheet = mini_studio.sheet("rin", ["standing_front", "waving"], seed=5, num_inference_steps=4, scorer="mini")
    plain = image_grid(sheet.images, cols=2, labels=sheet.labels)
    assert sheet.identity is not None and sheet.grid_image.height > plain.height
    assert mini_studio.sheet("rin", ["standing_front", "waving"], seed=5, num_inference_steps=4,
                             scorer=False).grid_image.height == plain.height
