"""The pose picker's thumbnails (headless, no browser): every pose's whole name is on its button and
no button has a fixed width too small for its text. tests/test_browser.py measures the same in Chromium
(before: "standing three quarter" showed as "standing three q" in a 102 px button, and six other names
and the upload button did not fit)."""

from __future__ import annotations

import pytest

W = pytest.importorskip("ipywidgets")

PX_PER_CHAR = 8  # an upper bound for Chromium's UI font at JupyterLab's 13 px (see tests/test_ui_polish.py)
BUTTON_PADDING_PX = 24


@pytest.fixture()
def picker(monkeypatch, tmp_path):
    from charstudio.ui.common import StatusLine
    from charstudio.ui.pose_picker import PosePicker

    monkeypatch.setenv("CHARSTUDIO_POSE_DIR", str(tmp_path))
    return PosePicker(StatusLine(), start=lambda *a, **k: True)


def _fits(button, text: str) -> bool:
    """The button sizes to its text, or its fixed width holds the text."""
    width = button.layout.width
    if width in ("auto", "max-content", "fit-content"):
        return True
    need = PX_PER_CHAR * len(text) + BUTTON_PADDING_PX
    return bool(width) and width.endswith("px") and int(width[:-2]) >= need


def test_every_pose_button_shows_the_whole_name_and_fits_it(picker):
    from charstudio.pose import list_poses

    names = list_poses()
    assert "standing_three_quarter" in names  # the longest shipped name
    problems = []
    for name in names:
        button = picker.buttons[name]
        if button.description != name.replace("_", " "):
            problems.append(f"{name}: the button says {button.description!r}")
        if not _fits(button, button.description):
            problems.append(f"{name}: {button.description!r} does not fit {button.layout.width}")
    assert not problems, "\n".join(problems)


def test_a_long_user_pose_name_fits_its_button_too(picker):
    from charstudio.pose.compose import load_people, people_of

    pose = people_of(load_people("standing_front"))[0]
    name = picker.add("my favourite running jump pose", pose)
    assert picker.buttons[name].description == name
    assert _fits(picker.buttons[name], name)
    assert picker.order == [name]


def test_the_upload_button_fits_its_text_and_count(picker):
    # ipywidgets shows "pose file/picture (0)": 21 characters and an icon, wider than the default 148 px
    assert _fits(picker.upload, f"{picker.upload.description} (0)xx")
