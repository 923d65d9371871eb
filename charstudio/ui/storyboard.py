"""06 Storyboard: play a script (every panel drawn, each character checked against its card),
see the page, then pick one panel, edit its caption or line, and re-draw or re-letter it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from ..callbacks import CancelToken
from .common import AppBase, ProgressPanel, Runner, StatusLine, TempFiles, blank_png, labelled, png_bytes
from .identity_view import IdentityControls
from .session import StudioSource, default_steps, exclusive, model_choices
from ..storyboard.script import example_script

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)

PAGE_WIDTH = 720  # the page as shown (the PNG keeps its own size)


def script_text(script: Any) -> str:
    """A script (path, text, dict or `Script`) as the YAML the app's script box shows."""
    import yaml

    from ..storyboard import load_script

    if isinstance(script, str) and "\n" in script:
        return script
    if isinstance(script, (str, Path)) and Path(script).is_file():
        return Path(script).read_text(encoding="utf-8")
    return yaml.safe_dump(load_script(script).to_dict(), sort_keys=False, allow_unicode=True)


class StoryboardApp(AppBase):
    """Play a storyboard script and re-draw single panels.

    >>> app = StoryboardApp(model="mini"); app
    >>> app.play_button.click(); app.wait()
    >>> app.panel.value = 2; app.line.value = "Wait!"; app.reletter_button.click(); app.wait()
    """

    def __init__(self, studio: Studio | None = None, *, model: str = "mini", device: str | None = None,
                 steps: int | None = None, script: Any = None, out: str | None = None):
        self.source = StudioSource(studio, model, device)
        model = self.source.model
        self.board: Any = None  # the latest Storyboard
        self._temp = TempFiles()

        # 1. The script and how to draw it.
        self.model = W.Combobox(value=model, options=model_choices(), ensure_option=False)
        script = script if script is not None else example_script()
        # Wide boxes fill their row beside the label and shrink with it (flex), never past the app's width.
        self.script = W.Textarea(value=script_text(script) if script is not None else "",
                                 layout=W.Layout(width="100%", flex="1 1 auto", height="220px"))
        self.steps = W.IntSlider(value=steps or default_steps(model), min=2, max=100)
        self.seed = W.Text(value="", placeholder="the script's", layout=W.Layout(width="130px"))
        self.identity = IdentityControls()
        self.identity.mode.value = "auto"
        self.out = W.Text(value=out or "", placeholder="empty: a temporary folder",
                          layout=W.Layout(width="100%", flex="1 1 auto"))
        self.overwrite = W.Checkbox(value=False, description="replace a storyboard there", indent=False,
                                    layout=W.Layout(width="auto"))
        self.play_button = W.Button(description="Play", button_style="primary", icon="play")
        self.cancel_button = W.Button(description="Cancel", button_style="warning", icon="stop")

        # 2. One panel: pick it, edit its words, re-draw it (a new picture) or re-letter it (words only).
        self.panel = W.Dropdown(options=[("(play the script first)", 0)], value=0, disabled=True,
                                layout=W.Layout(width="100%", flex="1 1 auto", max_width="480px"))
        self.caption = W.Text(value="", layout=W.Layout(width="100%", flex="1 1 auto"))
        self.line = W.Text(value="", layout=W.Layout(width="100%", flex="1 1 auto"))
        self.redraw_button = W.Button(description="Redraw panel", icon="refresh", disabled=True,
                                      tooltip="a new picture of this panel (the next seed), with the words above",
                                      layout=W.Layout(width="auto"))
        self.reletter_button = W.Button(description="Update words", icon="font", disabled=True,
                                        tooltip="only the caption and line: nothing is drawn",
                                        layout=W.Layout(width="auto"))
        self.panel.observe(lambda _c: self._show_panel(), names="value")

        self.status = StatusLine()
        self.progress = ProgressPanel(previews=False)
        self.page_image = W.Image(value=blank_png(), format="png", layout=W.Layout(width=f"{PAGE_WIDTH}px"))
        self.scores = W.HTML("")
        self.runner = Runner(self.status, busy=[self.play_button, self.model, self.redraw_button,
                                                self.reletter_button], cancel_button=self.cancel_button,
                             progress=self.progress)
        self.redraw_button.disabled = self.reletter_button.disabled = True  # nothing to re-draw before a play
        self.play_button.on_click(lambda _b: self.play())
        self.redraw_button.on_click(lambda _b: self.redraw(True))
        self.reletter_button.on_click(lambda _b: self.redraw(False))
        settings = W.VBox([
            labelled("model", self.model), labelled("script", self.script), labelled("steps", self.steps),
            labelled("seed", self.seed), self.identity.widget, labelled("save to", self.out),
            labelled("", self.overwrite),
            W.HBox([self.play_button, self.cancel_button, self.progress.widget]), self.status.widget])
        edit = W.VBox([W.HTML("<b>One panel</b>"), labelled("panel", self.panel), labelled("caption", self.caption),
                       labelled("line", self.line), W.HBox([self.redraw_button, self.reletter_button])])
        self.widget = W.VBox([settings, self.page_image, self.scores, edit])
        self._css_hooks("storyboard", self.page_image)

    # -- running --------------------------------------------------------------------------------
    def _folder(self) -> str:
        return self.out.value.strip() or self._temp.path(suffix="")

    def play(self) -> bool:
        """Draw every panel of the script in the box and show the page."""
        if self.runner.running:
            return False
        self.progress.reset()
        text, steps, identity = self.script.value, int(self.steps.value), self.identity.kwargs()
        seed_text, folder, overwrite = self.seed.value.strip(), self._folder(), bool(self.overwrite.value)

        def job(token: CancelToken) -> Any:
            from ..errors import ConfigError
            from ..storyboard import draw_storyboard

            if seed_text and not seed_text.isdigit():
                raise ConfigError("seed", seed_text, "a whole number >= 0, or empty for the script's")
            loaded = self.studio
            with exclusive(loaded, token):
                return draw_storyboard(loaded, text, out=folder, seed=int(seed_text) if seed_text else None,
                                       steps=steps, overwrite=overwrite, progress=self.progress.report, cancel=token,
                                       **identity)

        return self.runner.start("Play", job, self._done)

    def redraw(self, picture: bool = True) -> bool:
        """Panel `panel.value` again with the caption and line in the boxes: a new picture
        (``picture``) or the words only."""
        if self.runner.running:
            return False
        if self.board is None or not self.panel.value:
            self.status.warn("play the script first: there is no panel to re-draw yet")
            return False
        self.progress.reset()
        number, caption, line = int(self.panel.value), self.caption.value, self.line.value
        identity = self.identity.kwargs()

        def job(token: CancelToken) -> Any:
            from ..storyboard import redraw_panel

            loaded = self.studio
            with exclusive(loaded, token):
                return redraw_panel(loaded, self.board, number, redraw=picture, caption=caption, line=line,
                                    progress=self.progress.report, cancel=token, **identity)

        label = f"Panel {number}"
        return self.runner.start(label, job, lambda board: self._done(board, number))

    def _done(self, board: Any, number: int | None = None) -> None:
        self.board = board
        self.show_page()
        options = [(_cut(f"{p.index + 1}: {board.script.panels[p.index].caption or '(no caption)'}", 48), p.index + 1)
                   for p in board.panels]
        keep = number or (self.panel.value if self.panel.value in [v for _, v in options] else 1)
        self.panel.options = options
        self.panel.value = keep
        self.panel.disabled = False
        self._show_panel()
        where = f"; saved in {board.folder}" if board.folder is not None else ""
        tries = sum(board.tries)
        if number is None:
            text = f"{len(board.panels)} panels drawn ({tries} pictures){where}"
        else:
            text = f"panel {number} done ({len(board.panels[number - 1].tries)} tries){where}"
        (self.status.warn if board.note else self.status.ok)(text + (f"; {board.note}" if board.note else ""))

    def show_page(self) -> None:
        page = self.board.page()
        width = min(PAGE_WIDTH, page.width)
        self.page_image.value = png_bytes(page, width)
        self.page_image.layout.width = f"{width}px"
        rows = []
        for p in self.board.panels:
            cells = ", ".join(
                (f"{c['name']} {c['score']:.2f}" if c.get("score") is not None else c["name"])
                + (" <span style='color:#c00'>low</span>" if not p.passed else "") for c in p.characters)
            rows.append(f"<b>{p.index + 1}</b>: {cells} &middot; {len(p.tries)} tr{'y' if len(p.tries) == 1 else 'ies'}")
        self.scores.value = "<div class='charstudio-story-scores'>" + "<br>".join(rows) + "</div>"

    def _show_panel(self) -> None:
        board, number = self.board, self.panel.value
        if board is None or not number:
            return
        entry = board.script.panels[int(number) - 1]
        self.caption.value, self.line.value = entry.caption, entry.line
        idle = not self.runner.running
        self.redraw_button.disabled = self.reletter_button.disabled = not idle


def _cut(text: str, limit: int) -> str:
    """``text``, or its start ended in '...' when longer than ``limit`` characters (a drop-down option)."""
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."
