"""The Explore app's pose picker: the pose library (shipped and the user's own) as toggle
thumbnails, uploads (a pose JSON, read at once, or a picture the OpenPose detector reads in the
background), and the pose editor (`pose_editor.PoseEditor`), opened by **Edit pose**."""

from __future__ import annotations

import html
import json
import logging
import os
from typing import Any, Callable

import ipywidgets as W

from ..callbacks import CancelToken
from ..errors import ConfigError
from .common import StatusLine, error_text, png_bytes

log = logging.getLogger(__name__)

POSE_THUMB = 72
_ROW = POSE_THUMB + 44  # px: a thumbnail and its button, one row of cells
_GAP = 4  # px between cells


class PosePicker:
    """Pose thumbnails to toggle, selected in the order they were clicked.

    `order` holds the selected names; `get(name)` gives the Pose (or PoseGroup). `start(label,
    job, on_done)` runs the detection of an uploaded picture (the app's `Runner.start`), and
    `status` shows what an upload did. `widget` is the picker; **Edit pose** (`open_editor`)
    opens the pose editor below it on the first selected pose, and the editor's **Use this pose**
    and **Save to library** put the edited pose into the picker, selected alone.
    """

    def __init__(self, status: StatusLine, start: Callable[..., bool]):
        self.status = status
        self._start = start
        self.custom: dict[str, Any] = {}
        self.order: list[str] = []  # selected poses in the order they were clicked
        self.buttons: dict[str, W.ToggleButton] = {}
        # Whole rows only: three rows show, more scroll (no row is cut off at the bottom edge). The cells
        # wrap like words (a flex row): each is as wide as its name's button, so no name is cut off.
        self.grid = W.Box(layout=W.Layout(display="flex", flex_flow="row wrap", align_content="flex-start",
                                          max_height=f"{3 * (_ROW + _GAP) + 2}px", overflow_y="auto",
                                          overflow_x="hidden", width="100%"))
        self.upload = W.FileUpload(accept=".json,.png,.jpg,.jpeg,.webp", multiple=False,
                                   description="pose file/picture", layout=W.Layout(width="auto"))
        self.upload.observe(self._on_upload, names="value")
        self.label = W.HTML(value="selected: none (no ControlNet)")
        self.edit_button = W.Button(description="Edit pose", icon="pencil", layout=W.Layout(width="auto"),
                                    tooltip="open the pose editor on the first selected pose")
        self.edit_button.on_click(lambda _b: self.open_editor())
        self.editor: Any = None  # the PoseEditor, made on the first Edit pose
        self.editor_box = W.VBox([])
        self._build_grid()
        self.widget = W.VBox([W.HBox([self.label, self.edit_button], layout=W.Layout(align_items="center")),
                              self.grid, self.editor_box])

    def _build_grid(self) -> None:
        from ..pose import list_poses
        from ..pose.compose import load_people

        cells = []
        for name in list_poses():
            try:
                thumb = load_people(name).render(POSE_THUMB, POSE_THUMB)
            except Exception as exc:  # one broken library file must not hide the others
                log.warning("pose %s cannot be shown: %s", name, exc)
                continue
            cells.append(self._cell(name, thumb))
        self.grid.children = tuple(cells)

    def _cell(self, name: str, thumb: Any) -> W.VBox:
        # The button is as wide as its text ("standing three quarter" too), never narrower than the thumbnail's cell.
        button = W.ToggleButton(value=False, description=name.replace("_", " "), tooltip=name,
                                layout=W.Layout(width="auto", min_width=f"{POSE_THUMB + 30}px"))
        button.observe(lambda ch, n=name: self._toggled(n, ch["new"]), names="value")
        self.buttons[name] = button
        return W.VBox([W.Image(value=png_bytes(thumb), format="png", layout=W.Layout(width=f"{POSE_THUMB}px")),
                       button], layout=W.Layout(align_items="center", height=f"{_ROW}px", flex="0 0 auto",
                                                margin=f"0 {_GAP}px {_GAP}px 0"))

    def _toggled(self, name: str, on: bool) -> None:
        if on and name not in self.order:
            self.order.append(name)
        elif not on and name in self.order:
            self.order.remove(name)
        chosen = ", ".join(n.replace("_", " ") for n in self.order)
        self.label.value = f"selected: {html.escape(chosen)}" if chosen else "selected: none (no ControlNet)"

    def select(self, names: list[str]) -> None:
        """Select exactly these poses (library names or uploaded/restored ones), in this order."""
        unknown = [n for n in names if n not in self.buttons]
        if unknown:
            raise ConfigError("pose", unknown[0], f"choose from {', '.join(self.buttons)}")
        for n, b in self.buttons.items():
            if n not in names:
                b.value = False
        self.order = []
        for n in names:
            self.buttons[n].value = False
            self.buttons[n].value = True

    def add(self, name: str, pose: Any, select: bool = True) -> str:
        """Add a pose (a `Pose`) to the picker under `name` (made unique) and select it."""
        base, i = name, 1
        while name in self.buttons:
            i += 1
            name = f"{base}-{i}"
        self.custom[name] = pose
        cell = self._cell(name, pose.render(POSE_THUMB, POSE_THUMB))
        self.grid.children = (cell, *self.grid.children)
        if select:
            self.buttons[name].value = True
        return name

    def get(self, name: str) -> Any:
        """The Pose (or PoseGroup) shown under `name`: an uploaded, edited or restored one, else the library's."""
        from ..pose.compose import load_people

        return self.custom[name] if name in self.custom else load_people(name)

    # -- the pose editor ---------------------------------------------------------------------
    def open_editor(self, pose: Any = None) -> Any:
        """Show the pose editor below the thumbnails on ``pose`` (default: the first selected pose,
        else standing_front) and return it."""
        from .pose_editor import PoseEditor

        if pose is None:
            pose = self.get(self.order[0]) if self.order else "standing_front"
        if self.editor is None:
            self.editor = PoseEditor(pose, on_use=self.use_edited, on_save=self.saved, on_close=self.close_editor,
                                     start=self._start)
        else:
            self.editor.load(pose)
        self.editor_box.children = (self.editor.widget,)
        return self.editor

    def close_editor(self) -> None:
        """Hide the editor (its pose and undo history stay for the next Edit pose)."""
        self.editor_box.children = ()

    def use_edited(self, pose: Any) -> str:
        """The editor's **Use this pose**: the pose joins the picker as "edited", selected alone."""
        name = self.add("edited", pose, select=False)
        self.select([name])
        self.status.ok(f"using the edited pose ({name!r}): Generate draws it")
        return name

    def saved(self, name: str, path: Any) -> None:
        """The editor saved ``name`` to the user's library: show it (again) in the picker, selected alone."""
        from ..pose.compose import load_people

        thumb = load_people(name).render(POSE_THUMB, POSE_THUMB)
        self.custom.pop(name, None)
        if name in self.buttons:  # overwritten: a new thumbnail for the same button
            cell = next(c for c in self.grid.children if self.buttons[name] in c.children)
            cell.children[0].value = png_bytes(thumb)
        else:
            self.grid.children = (self._cell(name, thumb), *self.grid.children)
        self.select([name])
        self.status.ok(f"saved pose {name!r} to {path} and selected it: Generate draws it")

    def _on_upload(self, change: dict) -> None:
        for f in change["new"] or ():
            self.load_file(f["name"], bytes(f["content"]))

    def load_file(self, filename: str, data: bytes) -> None:
        """A pose JSON is read at once; a picture goes to the pose detector in the background."""
        from ..pose import Pose, load_pose

        stem = os.path.splitext(os.path.basename(filename))[0] or "upload"
        if filename.lower().endswith(".json"):
            try:
                pose = load_pose(json.loads(data.decode("utf-8")))
            except Exception as exc:
                self.status.error(f"pose file {filename}: {error_text(exc)}")
                return
            self.add(stem, pose)
            self.status.ok(f"added pose {stem!r} from {filename}")
            return

        def detect(token: CancelToken) -> Any:
            from ..io_utils import open_image

            return Pose.from_image(open_image(data, "pose picture", filename))

        self._start(f"detecting the pose in {filename}", detect,
                    on_done=lambda pose: (self.add(stem, pose),
                                          self.status.ok(f"added pose {stem!r} detected in {filename}")))
