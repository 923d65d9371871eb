"""Pieces every app shares: a background runner, a status line, a progress bar with a live
preview, a gallery that remembers recipes, the design picker, and small image helpers. The
shared Studio (loading, one run at a time, `RunHooks`) is in `session`.

Threads: long work runs on a worker thread so the notebook stays responsive (the Cancel button
must be clickable while a run is going). ipywidgets sends state changes from any thread, so
the worker updates widgets directly; it never writes into an `Output` widget, whose capture
only works on the kernel's main thread.
"""

from __future__ import annotations

import html
import io
import logging
import threading
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import ipywidgets as W

from ..callbacks import CancelToken, StepProgress
from ..errors import GenerationCancelled
from ..provenance.png import mark_text
# Re-exported: notebooks and scripts import these from here (`from charstudio.ui.common import get_studio`).
from .session import RunHooks, StudioSource, exclusive, get_studio, model_choices  # noqa: F401
from .design_picker import DesignPicker, picked_card  # noqa: F401  (they lived here; importers keep working)

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)

THUMB = 128  # gallery thumbnail size in pixels


# --------------------------------------------------------------------------------------------
# images and errors
# --------------------------------------------------------------------------------------------
def png_bytes(image: Any, size: int | None = None) -> bytes:
    """PIL image -> PNG bytes for an `ipywidgets.Image`, optionally scaled to `size` px wide.

    Small pictures (tiny's 128 px, 16 px previews) are scaled with NEAREST so pixels stay
    visible instead of blurring into mush.
    """
    from PIL import Image

    if size is not None and image.width != size:
        h = max(1, round(size * image.height / image.width))
        image = image.resize((size, h), Image.NEAREST if image.width < size else Image.LANCZOS)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def blank_png(size: int = 8) -> bytes:
    """A small grey placeholder, so Image widgets have valid content before the first run."""
    from PIL import Image

    return png_bytes(Image.new("RGB", (size, size), (235, 235, 235)))


def figure_png(fig: Any) -> bytes:
    """Render a matplotlib `Figure` to PNG bytes.

    The apps build `matplotlib.figure.Figure` objects directly, not through pyplot: that works
    on a worker thread and leaves the notebook's plotting backend alone.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def error_text(exc: BaseException) -> str:
    """One readable line for the status bar, the same line the CLI prints (`errors.describe`)."""
    from ..errors import describe

    return describe(exc)


# --------------------------------------------------------------------------------------------
# status line
# --------------------------------------------------------------------------------------------
_COLOURS = {"info": "#444", "ok": "#1a7f37", "warn": "#9a6700", "error": "#cf222e"}


class StatusLine:
    """A one-line message under an app. `text` and `level` are kept for tests and callers.

    The line also carries, for browser tests and users' own styling, which job it speaks of and
    whether that job is still running: ``<span data-job="3" data-level="ok" data-running="false">``
    inside an element of class ``charstudio-status``. The `Runner` sets `job` and `running`.
    """

    def __init__(self) -> None:
        self.widget = W.HTML(value="")
        self.widget.add_class("charstudio-status")
        self.text = ""
        self.level = "info"
        self.job = 0
        self.running = False
        self._render()

    def show(self, text: str, level: str = "info") -> None:
        self.text, self.level = text, level
        self._render()

    def set_job(self, job: int, running: bool) -> None:
        self.job, self.running = job, running
        self._render()

    def _render(self) -> None:
        colour = _COLOURS.get(self.level, _COLOURS["info"])
        self.widget.value = (f'<span style="color:{colour}" data-job="{self.job}" data-level="{self.level}" '
                             f'data-running="{str(self.running).lower()}">{html.escape(self.text)}</span>')

    def info(self, text: str) -> None:
        self.show(text, "info")

    def ok(self, text: str) -> None:
        self.show(text, "ok")

    def warn(self, text: str) -> None:
        self.show(text, "warn")

    def error(self, text: str) -> None:
        self.show(text, "error")


# --------------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------------
class Runner:
    """Runs one job at a time on a worker thread, with a cancel token and busy buttons.

    While a job runs, `busy` widgets are disabled and `cancel_button` is enabled and orange;
    while idle it is disabled and plain grey, so it never looks clickable when it does nothing.
    `progress` (a ProgressPanel) is shown for the run and taken off the screen when it ends, so
    nothing of a finished run looks as if it were still running. `start` returns False (and runs
    nothing) when a job is already running, so a double click never starts two runs. Errors end
    up in the status line as one line; the exception is kept in `last_error` for anyone who wants
    the traceback.
    """

    def __init__(self, status: StatusLine, busy: Sequence[W.Widget] = (), cancel_button: W.Button | None = None,
                 progress: "ProgressPanel | None" = None):
        self.status = status
        self.busy = list(busy)
        self.cancel_button = cancel_button
        self.progress = progress
        self.token = CancelToken()
        self.last_error: BaseException | None = None
        self.jobs_started = 0
        self._lock = threading.Lock()
        self._running = False
        self._done = threading.Event()
        self._done.set()
        self._thread: threading.Thread | None = None
        if cancel_button is not None:
            self._set_busy(False)
            cancel_button.on_click(lambda _b: self.cancel())

    @property
    def running(self) -> bool:
        return self._running

    def start(self, label: str, job: Callable[[CancelToken], Any],
              on_done: Callable[[Any], None] | None = None) -> bool:
        """Run `job(token)` in the background; `on_done(value)` runs on the worker afterwards."""
        with self._lock:
            if self._running:
                log.info("ignored %r: %s", label, "a run is already going")
                return False
            self._running = True
            self._done.clear()
        self.jobs_started += 1
        self.token = CancelToken()
        self.last_error = None
        self._set_busy(True)
        if self.progress is not None:
            self.progress.start()
        self.status.job, self.status.running = self.jobs_started, True
        self.status.info(f"{label}...")
        self._thread = threading.Thread(target=self._work, args=(label, job, on_done, self.token),
                                        name=f"charstudio-{label}", daemon=True)
        self._thread.start()
        return True

    def _work(self, label: str, job: Callable[[CancelToken], Any], on_done: Callable[[Any], None] | None,
              token: CancelToken) -> None:
        try:
            value = job(token)
            before = self.status.text
            if on_done is not None:
                on_done(value)
            # on_done may have said something more useful ("saved to ..."); keep that.
            if self.status.text == before:
                self.status.ok(f"{label}: done")
        except GenerationCancelled:
            self.status.warn(f"{label}: cancelled")
        except BaseException as exc:  # anything from the core: show it, never kill the kernel
            self.last_error = exc
            log.debug("%s failed:\n%s", label, "".join(traceback.format_exception(exc)))
            self.status.error(f"{label} failed: {error_text(exc)}")
        finally:
            self._set_busy(False)
            if self.progress is not None:
                self.progress.finish()
            self.status.set_job(self.status.job, False)  # last: a browser waiting on it sees the rest done
            with self._lock:
                self._running = False
            self._done.set()

    def _set_busy(self, busy: bool) -> None:
        for w in self.busy:
            w.disabled = busy
        if self.cancel_button is not None:
            self.cancel_button.disabled = not busy
            self.cancel_button.button_style = "warning" if busy else ""

    def cancel(self) -> None:
        """Ask the running job to stop at its next step."""
        if self._running:
            self.token.cancel()
            self.status.warn("cancelling at the next step...")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current job (if any) finished; True when nothing is running."""
        return self._done.wait(timeout)


# --------------------------------------------------------------------------------------------
# progress + live preview
# --------------------------------------------------------------------------------------------
class ProgressPanel:
    """A progress bar with a label and a live preview image, fed from the worker thread.

    Only on screen while a run goes (`start` ... `finish`, called by the `Runner`): the bar and its
    label are hidden when idle (keeping their space, so nothing below jumps) and the preview
    appears with the first preview and goes when the run ends; the app shows the final picture
    in its own place. `previews=False` for apps without step previews. CSS hooks:
    ``charstudio-progress`` (the bar's row) and ``charstudio-preview``.
    """

    def __init__(self, preview_size: int = 192, previews: bool = True):
        self.bar = W.FloatProgress(value=0.0, min=0.0, max=1.0, layout=W.Layout(width="200px"))
        self.label = W.Label(value="", layout=W.Layout(width="auto"))
        self.row = W.HBox([self.bar, self.label], layout=W.Layout(visibility="hidden", width="auto"))
        self.row.add_class("charstudio-progress")
        self.preview = W.Image(value=blank_png(), format="png",
                               layout=W.Layout(width=f"{preview_size}px", display="none"))
        self.preview.add_class("charstudio-preview")
        self.preview_size = preview_size
        self.previews_enabled = previews
        self.previews = 0  # how many previews arrived in the current run
        self.last: StepProgress | None = None
        self.widget = W.VBox([self.row, self.preview]) if previews else self.row

    @property
    def showing(self) -> bool:
        """Whether the bar (a run's progress) is on screen."""
        return self.row.layout.visibility != "hidden"

    @property
    def preview_showing(self) -> bool:
        return self.preview.layout.display != "none"

    def reset(self) -> None:
        self.bar.value = 0.0
        self.label.value = ""
        self.previews = 0
        self.last = None

    def start(self) -> None:
        """A run begins: an empty bar on screen, no preview until the first one arrives."""
        self.reset()
        self.preview.layout.display = "none"
        self.row.layout.visibility = "visible"

    def finish(self) -> None:
        """The run ended (done, cancelled or failed): bar, label and preview leave the screen
        (`bar`, `label` and `last` keep where the run got to, for callers and tests)."""
        self.row.layout.visibility = "hidden"
        self.preview.layout.display = "none"
        self.preview.value = blank_png()

    def report(self, p: StepProgress) -> None:
        self.last = p
        self.bar.value = p.fraction
        last = p.image + p.batch - 1
        shown = f"{p.image}-{last}" if last > p.image else f"{p.image}"
        self.label.value = (f"image {shown}/{p.images}, " if p.images > 1 else "") + f"step {p.step}/{p.steps}"

    def fraction(self, done: float, text: str) -> None:
        self.bar.value = max(0.0, min(1.0, done))
        self.label.value = text

    def show_preview(self, step_index: int, image: Any) -> None:
        self.previews += 1
        self.preview.value = png_bytes(image, self.preview_size)
        if self.previews_enabled:
            self.preview.layout.display = ""


# --------------------------------------------------------------------------------------------
# gallery
# --------------------------------------------------------------------------------------------
@dataclass
class GalleryItem:
    """One picture in the session's history, with the recipe (GenerationConfig) that made it."""

    image: Any
    recipe: Any | None
    label: str = ""
    controls: dict[str, Any] = field(default_factory=dict)  # widget values that produced it
    number: int = 0  # 1, 2, 3, ... in the order added; never reused, even after older items drop out
    mark: str = ""  # provenance: "watermarked / credentials" (provenance.png.mark_text)
    restore_button: W.Button | None = field(default=None, repr=False)
    pick: W.Checkbox | None = field(default=None, repr=False)


class Gallery:
    """The session's pictures, newest first. Each has a restore button and a 'pick' box.

    Widgets cannot be clicked on directly (ipywidgets' Image has no click event), so the
    button under each thumbnail does the restoring; `on_restore(item)` is called with it.
    """

    def __init__(self, on_restore: Callable[[GalleryItem], None] | None = None, max_items: int = 200):
        self.items: list[GalleryItem] = []
        self.on_restore = on_restore
        self.max_items = max_items
        self.selected: GalleryItem | None = None
        self.listeners: list[Callable[[], None]] = []  # told after every add (pickers in other apps)
        self._lock = threading.Lock()
        self._added = 0
        self.header = W.HTML(value="<b>Gallery</b> (empty)")
        self.grid = W.GridBox(children=(), layout=W.Layout(
            grid_template_columns=f"repeat(auto-fill, {THUMB + 12}px)", max_height="460px", overflow="auto"))
        self.widget = W.VBox([self.header, self.grid])

    def __len__(self) -> int:
        return len(self.items)

    def add(self, image: Any, recipe: Any | None, label: str = "", controls: dict | None = None) -> GalleryItem:
        """Add a picture; the oldest ones drop out beyond `max_items`."""
        with self._lock:
            self._added += 1
            number = self._added
        item = GalleryItem(image, recipe, label, dict(controls or {}), number=number, mark=mark_text(recipe))
        item.restore_button = W.Button(description=f"#{number} restore", tooltip=label or f"image {number}",
                                       layout=W.Layout(width=f"{THUMB - 40}px"))
        item.pick = W.Checkbox(value=False, description="", indent=False, layout=W.Layout(width="28px"),
                               tooltip="pick (for training or interpolation)")
        item.restore_button.on_click(lambda _b, it=item: self.restore(it))
        item.cell = W.VBox([W.Image(value=png_bytes(image, THUMB), format="png",  # type: ignore[attr-defined]
                                    layout=W.Layout(width=f"{THUMB}px")),
                            W.HTML(value=f'<small>{html.escape(label[:40])}</small>'),
                            W.HTML(value=f'<small class="charstudio-mark">{html.escape(item.mark)}</small>'),
                            W.HBox([item.restore_button, item.pick])])
        with self._lock:
            self.items.append(item)
            if len(self.items) > self.max_items:
                self.items.pop(0)
            self.grid.children = tuple(it.cell for it in reversed(self.items))  # type: ignore[attr-defined]
            self.header.value = f"<b>Gallery</b> ({len(self.items)} pictures; newest first)"
        self.selected = item
        for listener in list(self.listeners):
            listener()
        return item

    def restore(self, item: GalleryItem) -> None:
        self.selected = item
        if self.on_restore is not None:
            self.on_restore(item)

    def picks(self) -> list[GalleryItem]:
        """Items whose 'pick' box is ticked, oldest first."""
        return [it for it in self.items if it.pick is not None and it.pick.value]

    def recipes(self) -> list[tuple[int, str, Any]]:
        """(number, label, recipe) for every item that has a recipe, for pickers in other apps.

        The number is the item's own (shown on its restore button), so it names the same picture
        however many older ones have dropped out since.
        """
        return [(it.number, f"#{it.number} {it.label}"[:50], it.recipe) for it in self.items if it.recipe is not None]

    def recipe(self, number: int) -> Any:
        """The recipe of picture #number; a clear error when it has dropped out of the gallery."""
        from ..errors import ConfigError

        for n, _, recipe in self.recipes():
            if n == number:
                return recipe
        raise ConfigError("design", f"gallery #{number}", f"a picture still in the gallery (it keeps the newest "
                          f"{self.max_items}); pick another")


class AppBase:
    """What every app shares: notebook display, waiting for its run, and its model.

    Subclasses set `self.widget` (the root widget), `self.runner` (a Runner), `self.source`
    (a StudioSource) and `self.model` (the model-name control).
    """

    widget: W.Widget
    runner: "Runner"
    source: "StudioSource"
    model: W.Widget

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the current run to finish (for scripts, tests and notebook cells)."""
        return self.runner.wait(timeout)

    def _css_hooks(self, name: str, result: W.Widget) -> None:
        """Stable CSS classes for browser tests and users' styling: the app's root is
        ``charstudio-app charstudio-NAME``, its main picture ``charstudio-result``, its status line
        ``charstudio-app-status``."""
        self.widget.add_class("charstudio-app")
        self.widget.add_class(f"charstudio-{name}")
        result.add_class("charstudio-result")
        self.status.widget.add_class("charstudio-app-status")  # the app's own (a pose editor has one too)

    @property
    def studio(self) -> Studio:
        """The loaded studio, loading the model named in the controls if needed."""
        return self.source.get(self.model.value)


def labelled(label: str, widget: W.Widget, width: str = "110px") -> W.HBox:
    """A widget with a label on its left, in a column `width` wide (descriptions truncate in narrow
    layouts). The label never shrinks in a crowded row, and a longer label widens its own row
    rather than being cut off."""
    px = int(width[:-2]) if width.endswith("px") else 0
    need = f"{max(px, LABEL_PX_PER_CHAR * len(label) + 8)}px" if px else width
    return W.HBox([W.Label(value=label, layout=W.Layout(width=need, min_width=need, flex="0 0 auto")), widget])


# Chromium's default UI font at JupyterLab's 13 px: measured in JupyterLab, "standing front" takes
# 112 px, "fighting stance" 117 px.
LABEL_PX_PER_CHAR = 8


def step_hook(token: CancelToken, report: Callable[[StepProgress], None], steps: int,
              image: int = 1, images: int = 1) -> Callable[[Any, int, Any, dict], dict]:
    """A step callback that stops at the next step after Cancel and reports progress.

    For core functions that take step callbacks but no cancel token or progress function.
    """

    def hook(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        token.check()
        report(StepProgress(image=image, images=images, step=step + 1, steps=steps))
        return {}

    return hook


class TempFiles:
    """A private folder for plots that core functions write to disk before the app shows them."""

    def __init__(self) -> None:
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="charstudio-ui-")
        self._n = 0

    def path(self, suffix: str = ".png") -> str:
        import os

        self._n += 1
        return os.path.join(self.dir, f"{self._n:05d}{suffix}")

    @staticmethod
    def read(path: Any) -> bytes:
        with open(path, "rb") as f:
            return f.read()
