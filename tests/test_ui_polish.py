"""The apps' finish, headless (ipywidgets, no browser): the rules of issue #40 that can be read from
the widgets. tests/test_browser.py checks the same in JupyterLab and Chromium.

- nothing from a finished run stays on screen as if it were running;
- a button that does nothing now looks disabled (Cancel/Stop while idle);
- controls sit next to what they control;
- no label or control is cut off by a fixed width that is too small for its text.
"""

from __future__ import annotations

import threading

import pytest

W = pytest.importorskip("ipywidgets")

APPS = ["ExploreApp", "TrainApp", "InterpolateApp", "ProcessApp", "WorkflowsApp"]
# Chromium's default UI font at JupyterLab's 13 px: measured in tests/test_browser.py's pages,
# "standing front" is 112 px wide, "fighting stance" 117 px: 8 px a character is a fair upper bound.
PX_PER_CHAR = 8
BUTTON_DEFAULT_PX = 148  # ipywidgets' --jp-widgets-inline-width-short
CHECKBOX_DEFAULT_PX = 300  # ipywidgets' --jp-widgets-inline-width


def build(name, studio, tmp_path):
    import charstudio.ui as ui

    kwargs = {"lora_dir": str(tmp_path / "lora")} if name == "ExploreApp" else {}
    return getattr(ui, name)(studio, **kwargs)


def cancel_of(app):
    return getattr(app, "stop_button", None) or app.cancel_button


def walk(widget):
    """The widget and every widget under it (box children, tab pages)."""
    yield widget
    for child in getattr(widget, "children", ()) or ():
        yield from walk(child)


@pytest.mark.parametrize("name", APPS)
def test_cancel_looks_disabled_while_idle_and_the_progress_shows_only_while_running(name, tiny_studio, tmp_path):
    app = build(name, tiny_studio, tmp_path)
    cancel = cancel_of(app)
    assert cancel.disabled and cancel.button_style == ""  # grey, not a bright orange that looks clickable
    assert app.progress.row.layout.visibility == "hidden"
    started, release = threading.Event(), threading.Event()

    def job(token):
        started.set()
        assert release.wait(30)

    assert app.runner.start("Job", job)
    try:
        assert started.wait(30)
        assert not cancel.disabled and cancel.button_style == "warning"
        assert app.progress.row.layout.visibility == "visible"
        assert 'data-running="true"' in app.status.widget.value
    finally:
        release.set()
        assert app.wait(30)
    assert cancel.disabled and cancel.button_style == ""
    assert app.progress.row.layout.visibility == "hidden" and app.progress.preview.layout.display == "none"
    assert 'data-running="false"' in app.status.widget.value and 'data-level="ok"' in app.status.widget.value


def test_explore_live_preview_leaves_when_the_final_picture_arrives(tiny_studio, tmp_path):
    from charstudio.ui import ExploreApp
    from charstudio.ui.common import blank_png

    app = ExploreApp(tiny_studio, steps=2, preview_every=1, lora_dir=str(tmp_path / "lora"))
    assert app.progress.preview.layout.display == "none"  # no grey box before any run
    seen = []
    real = app.progress.show_preview

    def spy(step, image):
        real(step, image)
        seen.append((app.progress.preview.layout.display, app.progress.row.layout.visibility))

    app.progress.show_preview = spy
    app.prompt.value = "a knight"
    app.generate_button.click()
    assert app.wait(120) and app.status.level == "ok", app.status.text
    assert seen and all(s == ("", "visible") for s in seen)  # the preview was on screen while it ran
    assert app.progress.preview.layout.display == "none"  # ... and is gone now
    assert app.progress.row.layout.visibility == "hidden"  # no bar stuck at "step 2/2"
    assert app.image.value != blank_png()


def test_train_a_second_start_clears_the_previous_curve_and_before_after(tiny_studio, tmp_path):
    from charstudio.ui import TrainApp
    from charstudio.ui.common import blank_png

    app = TrainApp(tiny_studio, data_dir="", output_dir=str(tmp_path / "lora"))
    assert app.loss_plot.layout.display == "none"  # no empty grey plot before the first run
    # What a finished first run leaves on screen:
    app.loss_plot.value, app.loss_plot.layout.display = b"an old curve", ""
    app.comparison_images.children = (W.HTML("weight 0 (before)"),)
    app.comparison_info.value = "old prompt"
    app.start()  # no data folder: this run fails at once, after the screen was cleared
    assert app.wait(60)
    assert app.status.level == "error" and "data_dir" in app.status.text
    assert app.loss_plot.value == blank_png() and app.loss_plot.layout.display == "none"
    assert app.comparison_images.children == () and app.comparison_info.value == ""


def test_interpolate_cancel_and_progress_sit_beside_each_tabs_button(tiny_studio, tmp_path):
    app = build("InterpolateApp", tiny_studio, tmp_path)
    buttons = [app.interpolate_button, app.mix_button, app.animate_button]
    for page, button in zip(app.tabs.children, buttons):
        rows = [w for w in walk(page) if isinstance(w, W.HBox) and button in w.children]
        assert rows, f"{button.description} is not in a row of its tab"
        assert app.cancel_button in rows[0].children and app.progress.widget in rows[0].children
        assert app.status.widget in set(walk(page))
    # ... and no longer above the tabs, away from the buttons.
    assert app.cancel_button not in set(walk(app.widget.children[0]))


def test_workflows_before_and_after_show_at_the_same_scale(mini_studio):
    from PIL import Image

    from charstudio.ui import WorkflowsApp

    app = WorkflowsApp(mini_studio)
    assert app.before_image.layout.width == app.after_image.layout.width
    square = Image.new("RGB", (64, 64), "white")
    app.show_pictures(square, square.copy())  # inpaint / detail: the same size in, the same size shown
    assert app.before_image.layout.width == app.after_image.layout.width == "256px"
    wide = Image.new("RGB", (256, 70), "white")  # a turnaround sheet: four 64 px views
    app.show_pictures(square, wide)
    assert app.before_image.layout.width == "128px" and app.after_image.layout.width == "512px"  # one scale


def test_process_prompt_field_is_full_width(tiny_studio, tmp_path):
    app = build("ProcessApp", tiny_studio, tmp_path)
    prompt = app.design.prompt
    assert isinstance(prompt, W.Textarea)  # a long prompt wraps instead of scrolling out of sight
    assert prompt.layout.width == "100%"
    row = next(w for w in walk(app.widget) if prompt in getattr(w, "children", ()))
    assert row in app.widget.children or any(row in box.children for box in app.widget.children
                                             if not isinstance(box, W.Tab))


def _cut_off(widget) -> str | None:
    """Why `widget`'s text cannot fit the fixed width it was given (None if it can)."""
    width = getattr(widget.layout, "width", None)
    if width in ("auto", "100%", "max-content", "fit-content"):
        return None
    px = int(width[:-2]) if width and width.endswith("px") else None
    if isinstance(widget, W.Checkbox) and widget.description:
        need, have = PX_PER_CHAR * len(widget.description) + 24, px or CHECKBOX_DEFAULT_PX
    elif isinstance(widget, W.Button) and not isinstance(widget, W.ToggleButton) and widget.description:
        need = PX_PER_CHAR * len(widget.description) + (22 if widget.icon else 0) + 24
        have = px or BUTTON_DEFAULT_PX
    elif isinstance(widget, W.Label) and widget.value and px is not None:
        need, have = PX_PER_CHAR * len(widget.value), px
        if widget.layout.min_width is None or widget.layout.flex is None:
            return f"label {widget.value!r} has a fixed width but can shrink in a crowded row"
    else:
        return None
    if need > have:
        return f"{type(widget).__name__} {widget.description if hasattr(widget, 'description') and widget.description else widget.value!r}: about {need}px of text in {have}px"
    return None


@pytest.mark.parametrize("name", APPS)
def test_no_label_or_button_is_cut_off_by_its_fixed_width(name, tiny_studio, tmp_path):
    app = build(name, tiny_studio, tmp_path)
    problems = sorted({p for w in walk(app.widget) if (p := _cut_off(w))})
    assert not problems, "\n".join(problems)
