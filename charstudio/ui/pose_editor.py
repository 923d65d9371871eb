"""The pose editor: drag joints on a canvas, mirror, rotate, scale, move, add or delete a person,
undo, start from the library, a picture or a PNG's recipe, save to the user's pose library.

    from charstudio.ui.pose_editor import PoseEditor
    editor = PoseEditor("standing_front"); editor          # in a notebook
    editor.move_joint(0, "right_wrist", 150, 100)            # the same edits from code
    editor.save("arm up")                                    # -> $CHARSTUDIO_POSE_DIR/arm_up.json

In the Explore app (notebook 01) the pose picker's **Edit pose** button opens it on the first
selected pose; **Use this pose** (or **Save to library**) puts the edited pose into the picker,
selected, so Generate draws it. Notebook 05 opens it on a two-person pose.

Why anywidget: the canvas is one Python class plus an ES module (``static/pose_editor.js``) with no
separate Jupyter extension to install; it works in JupyterLab, Notebook 7 and VS Code. A drag runs
entirely in the browser (smooth, no kernel round trip per mouse move) and ends in one small message,
so one drag is one undo step. Its state is synced traitlets, so headless tests set the model state
and send the same messages the browser sends. (ipycanvas + ipyevents would need two extensions and a
kernel round trip per mouse move.) The buttons around the canvas are plain ipywidgets.

The contract between the browser and Python (`PoseCanvas`):

* Traits (Python -> browser): ``people``, one dict per person with ``body`` (18 [x, y, confidence]
  in canvas pixels, COCO-18 order, confidence 0 = missing) and ``hand_left``/``hand_right``/``face``
  (lists or None); ``canvas_width``/``canvas_height``; ``selected`` (the person the buttons act on;
  the browser sets it when a person is pressed); ``background`` (a data: URL of the reference
  picture, "" for none) and ``background_opacity``; ``view_size`` (the canvas's longer side in
  css px); ``limbs`` and ``colors`` (the OpenPose limb pairs and colours of `pose.drawing`).
* Messages (browser -> Python), in canvas pixels: ``{"event": "move_joint", "person": p, "joint": j,
  "x": x, "y": y}`` at the end of a joint's drag, ``{"event": "translate", "person": p, "dx": dx,
  "dy": dy}`` at the end of a drag of the figure (a press near a person but not on a joint).
  Python applies the edit (`charstudio.pose.edit`) and sends ``people`` back.
* DOM hooks: the ``<canvas class="cs-pose-canvas">`` carries ``data-joints``, a JSON list of
  ``{"person", "joint", "x", "y"}`` for every present joint, x and y in css px from the canvas's
  top-left corner (kept up to date after every change), ``data-scale`` (css px per canvas pixel),
  ``data-selected`` and ``data-people``. To drag joint N of person P in a browser: read the entry
  from ``data-joints``, press the mouse at the canvas's bounding box corner + (x, y), move, release.
  The editor's root has class ``cs-pose-editor``; the save name field ``cs-pose-name``; the buttons
  have their text ("Save to library", "Use this pose", "Undo", ...) and classes ``cs-pose-save``,
  ``cs-pose-use``.
* Saving writes ``NAME.json`` (pose-editor JSON, all people) atomically into the user's pose library,
  ``$CHARSTUDIO_POSE_DIR`` or ``~/.charstudio/poses`` (`charstudio.pose.library.user_pose_dir`), which
  `list_poses`/`load_pose` and the pose picker read. An existing name is refused unless "overwrite"
  is ticked (``save(name, overwrite=True)``).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import anywidget
import ipywidgets as W
import traitlets as T

from ..errors import ConfigError
from ..pose import edit
from ..pose.compose import PoseGroup
from ..pose.drawing import JOINT_COLORS, LIMBS, POSE_LINES
from .common import StatusLine, error_text, png_bytes

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
ROTATE_STEP, SCALE_STEP = 15.0, 1.1
CONTROL_VIEW = 256  # px: the control image's longer side on screen


class PoseCanvas(anywidget.AnyWidget):
    """The drawing surface: the people's skeletons over an optional reference picture."""

    _esm = STATIC / "pose_editor.js"
    _css = STATIC / "pose_editor.css"
    people = T.List().tag(sync=True)
    canvas_width = T.Int(512).tag(sync=True)
    canvas_height = T.Int(512).tag(sync=True)
    selected = T.Int(0).tag(sync=True)
    background = T.Unicode("").tag(sync=True)
    background_opacity = T.Float(0.5).tag(sync=True)
    view_size = T.Int(384).tag(sync=True)
    limbs = T.List([list(pair) for pair in LIMBS]).tag(sync=True)
    colors = T.List([list(c) for c in JOINT_COLORS]).tag(sync=True)


def _person_state(pose: Any) -> dict[str, Any]:
    def points(arr: Any) -> list[list[float]] | None:
        return None if arr is None else [[round(float(v), 3) for v in row] for row in arr]

    return {"body": points(pose.body), "hand_left": points(pose.hand_left), "hand_right": points(pose.hand_right),
            "face": points(pose.face)}


def _button(text: str, tooltip: str, on_click: Callable[[], Any], icon: str = "") -> W.Button:
    b = W.Button(description=text, tooltip=tooltip, icon=icon, layout=W.Layout(width="auto"))
    b.on_click(lambda _b: on_click())
    return b


class PoseEditor:
    """A pose (one or more people) being edited; `widget` shows it. See the module docstring.

    ``on_use(pose)`` is called by **Use this pose** and ``on_save(name, path)`` after a save (the
    pose picker passes both); ``start(label, job, on_done)`` runs the pose detector in the
    background (an app's `Runner.start`; without it detection runs at once). ``detector`` is handed
    to `Pose.from_image` (default: controlnet-aux's, whose weights are downloaded once).
    """

    def __init__(self, pose: Any = "standing_front", *, on_use: Callable[[Any], None] | None = None,
                 on_save: Callable[[str, Path], None] | None = None, on_close: Callable[[], None] | None = None,
                 start: Callable[..., bool] | None = None, detector: Any = None, view_size: int = 384):
        from ..pose import list_poses

        self.history = edit.EditHistory(pose)
        self.on_use, self.on_save, self._start, self.detector = on_use, on_save, start, detector
        self.status = StatusLine()
        self.canvas = PoseCanvas(view_size=view_size)
        self.canvas.on_msg(self._on_message)
        self.canvas.observe(lambda _ch: self._show_people(), names="selected")

        # 1. Who: the person the buttons act on, add and delete.
        self.person = W.Dropdown(options=[("person 1", 0)], value=0, layout=W.Layout(width="110px"))
        self.person.observe(self._person_picked, names="value")
        self.add_button = _button("Add person", "a second person, beside the others", lambda: self._do(self.add_person))
        self.delete_button = _button("Delete person", "remove the selected person",
                                     lambda: self._do(self.delete_person))
        # 2. The whole figure (joints and moves are dragged on the canvas).
        self.mirror_button = _button("Mirror", "flip the selected person left-right", lambda: self._do(self.mirror))
        self.rotate_left = _button(f"Rotate -{ROTATE_STEP:g}°", "turn anticlockwise",
                                   lambda: self._do(self.rotate, -ROTATE_STEP))
        self.rotate_right = _button(f"Rotate +{ROTATE_STEP:g}°", "turn clockwise",
                                    lambda: self._do(self.rotate, ROTATE_STEP))
        self.smaller = _button("Smaller", "shrink the selected person by 10%", lambda: self._do(self.scale, 1 / SCALE_STEP))
        self.bigger = _button("Bigger", "grow the selected person by 10%", lambda: self._do(self.scale, SCALE_STEP))
        self.undo_button = _button("Undo", "undo the last edit", lambda: self._do(self.undo), icon="undo")
        self.redo_button = _button("Redo", "redo what Undo took back", lambda: self._do(self.redo), icon="repeat")
        # 3. Where to start: the library, a file (pose JSON, a PNG's recipe, a picture to detect), a reference.
        names = list_poses()
        self.library = W.Dropdown(options=names, value=pose if pose in names else None, layout=W.Layout(width="170px"))
        self.load_button = _button("Load", "start again from this library pose",
                                   lambda: self._do(self.load, self.library.value))
        self.upload = W.FileUpload(accept=".json,.png,.jpg,.jpeg,.webp", multiple=False,
                                   description="Open file", layout=W.Layout(width="auto"),
                                   tooltip="a pose JSON, a PNG with a recipe, or a picture to detect a pose in")
        self.upload.observe(lambda ch: [self.load_file(f["name"], bytes(f["content"])) for f in ch["new"] or ()],
                            names="value")
        self.reference_upload = W.FileUpload(accept=".png,.jpg,.jpeg,.webp", multiple=False,
                                             description="Reference", layout=W.Layout(width="auto"),
                                             tooltip="a picture to show behind the skeleton")
        self.reference_upload.observe(
            lambda ch: [self._do(self.set_reference, bytes(f["content"])) for f in ch["new"] or ()], names="value")
        self.opacity = W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="opacity",
                                     layout=W.Layout(width="230px"), style={"description_width": "60px"})
        W.jslink((self.opacity, "value"), (self.canvas, "background_opacity"))
        self.clear_reference = _button("No reference", "remove the reference picture",
                                       lambda: self._do(self.set_reference, None))
        # 4. The control image, in either line style.
        self.lines = W.ToggleButtons(options=list(POSE_LINES), value=POSE_LINES[0],
                                     tooltips=["as controlnet-aux draws (SD 1.5, thibaud's SDXL)",
                                               "wider with the picture's size (xinsir's SDXL ControlNets)"],
                                     style={"button_width": "80px"})
        self.lines.observe(lambda _ch: self._show_control(), names="value")
        self.control = W.Image(format="png", layout=W.Layout(width=f"{CONTROL_VIEW}px"))
        self.control.add_class("cs-pose-control")
        # 5. Save, use, close.
        self.name = W.Text(value="", placeholder="pose name, e.g. arm up", layout=W.Layout(width="180px"))
        self.name.add_class("cs-pose-name")
        self.overwrite = W.Checkbox(value=False, description="overwrite", indent=False, layout=W.Layout(width="90px"))
        self.save_button = _button("Save to library", "save as NAME.json in your pose library",
                                   lambda: self._do(self.save, self.name.value, self.overwrite.value), icon="save")
        self.save_button.add_class("cs-pose-save")
        self.use_button = _button("Use this pose", "send the pose to the app: Generate draws it",
                                  lambda: self._do(self.use), icon="check")
        self.use_button.add_class("cs-pose-use")
        self.use_button.layout.display = None if on_use else "none"
        self.on_close = on_close
        self.close_button = _button("Close", "close the editor", lambda: on_close and on_close())
        self.close_button.layout.display = None if on_close else "none"

        row = W.HBox
        tools = W.VBox([
            row([self.person, self.add_button, self.delete_button]),
            row([self.mirror_button, self.rotate_left, self.rotate_right]),
            row([self.smaller, self.bigger, self.undo_button, self.redo_button]),
            row([self.library, self.load_button]),
            row([self.upload, self.reference_upload]),
            row([self.opacity, self.clear_reference]),
            W.HTML("<b>Control image</b> (what the model sees)"), self.lines, self.control,
        ], layout=W.Layout(min_width="300px"))
        save_row = row([self.name, self.overwrite, self.save_button, self.use_button, self.close_button],
                       layout=W.Layout(flex_flow="row wrap"))
        help_text = W.HTML("<small>Drag a joint to move it; drag near a person (not on a joint) to move the "
                           "whole figure. The buttons act on the selected person.</small>")
        self.widget = W.VBox([W.HBox([self.canvas, tools], layout=W.Layout(flex_flow="row wrap")),
                              help_text, save_row, self.status.widget])
        self.widget.add_class("cs-pose-editor")
        self._show_people()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- state ---------------------------------------------------------------------------------
    @property
    def group(self) -> PoseGroup:
        """Everyone being edited (a copy)."""
        return edit.as_group(self.history.current)

    def pose(self) -> Any:
        """The edited pose as a recipe takes it: a Pose, or a PoseGroup when there are several people."""
        return edit.as_pose(self.history.current)

    @property
    def selected(self) -> int:
        return self.canvas.selected

    def _show_people(self) -> None:
        group = self.history.current
        n = len(group.people)
        if self.canvas.selected >= n:
            self.canvas.selected = n - 1
        options = [(f"person {i + 1}", i) for i in range(n)]
        if list(self.person.options) != options:
            self.person.options = options
        self.person.value = self.canvas.selected
        self.canvas.canvas_width, self.canvas.canvas_height = group.canvas_width, group.canvas_height
        self.canvas.people = [_person_state(p) for p in group.people]
        self.delete_button.disabled = n == 1
        self.undo_button.disabled = not self.history.can_undo
        self.redo_button.disabled = not self.history.can_redo
        self._show_control()

    def _person_picked(self, change: dict) -> None:
        if change["new"] is not None and change["new"] != self.canvas.selected:
            self.canvas.selected = change["new"]

    def control_image(self, lines: str | None = None) -> Any:
        """The OpenPose control image of the pose, as the model will see it (at the canvas size)."""
        return self.history.current.render(lines=lines or self.lines.value)

    def _show_control(self) -> None:
        self.control.value = png_bytes(self.control_image(), CONTROL_VIEW)

    def _apply(self, op: Callable[..., PoseGroup], *args: Any) -> PoseGroup:
        group = self.history.apply(op, *args)
        self._show_people()
        return group

    def _do(self, action: Callable[..., Any], *args: Any) -> None:
        """A button's action: errors go to the status line (the method itself raises them)."""
        try:
            action(*args)
        except Exception as exc:
            log.debug("pose editor: %s failed", getattr(action, "__name__", action), exc_info=True)
            self.status.error(error_text(exc))

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        """A drag's end from the browser (see the module docstring)."""
        try:
            if not isinstance(content, dict) or content.get("event") not in ("move_joint", "translate"):
                raise ConfigError("event", content, "a message with event 'move_joint' or 'translate'")
            if content["event"] == "move_joint":
                self.move_joint(content.get("person"), content.get("joint"), content.get("x"), content.get("y"))
            else:
                self.translate(content.get("dx"), content.get("dy"), person=content.get("person"))
        except Exception as exc:
            self.status.error(error_text(exc))
            self.canvas.send_state("people")  # the browser shows its drag: put the unchanged pose back

    # -- edits (each one undo step) ------------------------------------------------------------------
    def _who(self, person: int | None) -> int:
        return self.canvas.selected if person is None else person

    def move_joint(self, person: int, joint: int | str, x: float, y: float) -> PoseGroup:
        """Move body joint ``joint`` (0-17 or a COCO-18 name) of ``person`` to (x, y) canvas pixels."""
        group = self._apply(edit.move_joint, person, joint, x, y)
        self.status.info(f"moved person {person + 1}'s {edit.COCO18_NAMES[edit.check_joint(joint)].replace('_', ' ')}")
        return group

    def translate(self, dx: float, dy: float, person: int | None = None) -> PoseGroup:
        """Move the whole figure by (dx, dy) canvas pixels."""
        return self._apply(edit.translate, self._who(person), dx, dy)

    def mirror(self, person: int | None = None) -> PoseGroup:
        """Flip the selected person (or ``person``) left-right in place."""
        return self._apply(edit.mirror, self._who(person))

    def rotate(self, degrees: float, person: int | None = None) -> PoseGroup:
        """Turn the selected person by ``degrees`` clockwise."""
        return self._apply(edit.rotate, self._who(person), degrees)

    def scale(self, factor: float, person: int | None = None) -> PoseGroup:
        """Make the selected person ``factor`` times larger."""
        return self._apply(edit.scale, self._who(person), factor)

    def add_person(self, pose: Any = None) -> PoseGroup:
        """Add a person (``pose``, else a copy of the last one) beside the others, and select them."""
        group = self._apply(edit.add_person, pose)
        self.canvas.selected = len(group.people) - 1
        self.status.info(f"added person {len(group.people)}")
        return group

    def delete_person(self, person: int | None = None) -> PoseGroup:
        """Remove the selected person (or ``person``); a pose keeps at least one."""
        group = self._apply(edit.delete_person, self._who(person))
        self._show_people()
        return group

    def load(self, pose: Any) -> PoseGroup:
        """Start again from ``pose`` (a library name, a Pose or PoseGroup, pose JSON); undo goes back."""
        group = self.history.push(edit.as_group(pose))
        self.canvas.selected = 0
        self._show_people()
        self.status.info(f"editing {pose if isinstance(pose, str) else 'a new pose'}")
        return group

    def undo(self) -> PoseGroup:
        group = self.history.undo()
        self._show_people()
        return group

    def redo(self) -> PoseGroup:
        group = self.history.redo()
        self._show_people()
        return group

    # -- files ------------------------------------------------------------------------------------
    def set_reference(self, image: Any) -> None:
        """Show ``image`` (a PIL image, PNG/JPEG bytes or a path) behind the skeleton; None removes it."""
        from PIL import Image

        from ..io_utils import open_image

        if image is None:
            self.canvas.background = ""
            return
        picture = image if isinstance(image, Image.Image) else open_image(image, "reference picture")
        picture = picture.convert("RGB")
        picture.thumbnail((2 * self.canvas.view_size, 2 * self.canvas.view_size))
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        self.canvas.background = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

    def load_png(self, path: str | Path) -> PoseGroup:
        """Start from the pose in a PNG's recipe (charstudio's, or A1111's has none); the picture
        becomes the reference."""
        from ..recipe.metadata import read_recipe

        image, recipe = read_recipe(path)
        if not recipe.pose:
            raise ConfigError("pose", str(path), "a PNG whose recipe has a pose (this one was drawn without one)")
        group = self.load(PoseGroup.from_dict(recipe.pose))
        self.set_reference(image)
        self.status.ok(f"editing the pose of {Path(path).name}")
        return group

    def load_picture(self, image: Any) -> None:
        """Detect the pose in a picture (the OpenPose detector), start from it, and show the picture
        as the reference. In the background when the editor was given ``start``."""
        from ..io_utils import open_image
        from ..pose import Pose

        picture = open_image(image, "pose picture") if isinstance(image, (str, Path, bytes)) else image

        def detect(_token: Any = None) -> Any:
            return Pose.from_image(picture, detector=self.detector)

        def done(pose: Any) -> None:
            self.load(pose)
            self.set_reference(picture)
            self.status.ok("editing the pose detected in the picture")

        if self._start is not None:
            self._start("detecting the pose", detect, on_done=done)
        else:
            done(detect())

    def load_file(self, filename: str, data: bytes) -> None:
        """An uploaded file: pose JSON, a PNG with a recipe holding a pose, else a picture to detect."""
        try:
            if filename.lower().endswith(".json"):
                self.load(json.loads(data.decode("utf-8")))
                self.status.ok(f"editing the pose from {filename}")
                return
            if filename.lower().endswith(".png") and self._png_has_pose(data):
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / (os.path.basename(filename) or "picture.png")
                    path.write_bytes(data)
                    self.load_png(path)
                return
            self.load_picture(data)
        except Exception as exc:
            self.status.error(f"{filename}: {error_text(exc)}")

    @staticmethod
    def _png_has_pose(data: bytes) -> bool:
        from ..recipe.metadata import RECIPE_KEY
        from ..io_utils import open_image

        text = getattr(open_image(data, "picture"), "text", {}) or {}
        try:
            return bool(json.loads(text.get(RECIPE_KEY, "{}")).get("pose"))
        except (ValueError, AttributeError):
            return False

    def save(self, name: str, overwrite: bool = False) -> Path:
        """Save the pose (everyone) to the user's pose library as ``NAME.json``; refuses an existing
        name unless ``overwrite``. Returns the path."""
        from ..pose.library import save_pose

        path = save_pose(self.history.current, name, overwrite=overwrite)
        key = path.stem
        if key not in self.library.options:
            current = self.library.value
            self.library.options = sorted([*self.library.options, key])
            self.library.value = current
        self.status.ok(f"saved pose {key!r} to {path}")
        if self.on_save is not None:
            self.on_save(key, path)
        return path

    def use(self) -> Any:
        """Hand the pose to the app (``on_use``): Generate then draws it."""
        pose = self.pose()
        if self.on_use is not None:
            self.on_use(pose)
        return pose
