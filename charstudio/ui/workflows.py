"""05 Character workflows: one card through inpainting, the detail pass, the hires fix, a
turnaround, an expression sheet or two characters with regional prompts, shown before/after."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from ..callbacks import CancelToken
from ..config import MAX_SEED
from ..models.presets import preset_examples
from .common import (
    AppBase,
    DesignPicker,
    ProgressPanel,
    Runner,
    StatusLine,
    blank_png,
    labelled,
    png_bytes,
)
from .draft import DraftPanel
from .identity_view import IdentityControls, IdentityStrip, summary_line
from .session import RunHooks, StudioSource, default_steps, exclusive, model_choices
from ..workflows.masks import REGIONS

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)

VIEW = 256  # displayed size of the before and after pictures
WORKFLOWS = [("Inpaint a body region", "inpaint"), ("Detail pass (face, hands)", "detail"),
             ("Hires fix", "hires"), ("Turnaround", "turnaround"), ("Expression sheet", "expressions"),
             ("Two characters (regions)", "regions")]
TITLES = {value: title for title, value in WORKFLOWS}


class WorkflowsApp(AppBase):
    """Run one character workflow on a design and show the picture before and after.

    >>> app = WorkflowsApp(model="mini"); app
    >>> app.workflow.value = "inpaint"; app.run_button.click(); app.wait()
    """

    def __init__(self, studio: Studio | None = None, *, model: str = "mini", device: str | None = None,
                 steps: int | None = None, prompt: str | None = None):
        from ..pose import list_poses

        self.source = StudioSource(studio, model, device)
        model = self.source.model
        self.result: Any = None  # the latest Result (or sheet) of the workflow
        self.before: Any = None  # the picture it started from (or the comparison)

        # 1. What to draw, and which workflow.
        self.model = W.Combobox(value=model, options=model_choices(), ensure_option=False)
        cards, example = preset_examples(model)
        # A wide prompt box: the example prompts are longer than a 260 px field (it wraps instead).
        self.design = DesignPicker(prompt=prompt if prompt is not None else example, card=cards[0], wide=True)
        self.design.widget.layout = W.Layout(width="100%", flex="1 1 auto")
        poses = list_poses()
        self.pose = W.Dropdown(options=poses, value="standing_front" if "standing_front" in poses else poses[0])
        self.seed = W.BoundedIntText(value=random.randint(0, 99_999), min=0, max=MAX_SEED - 64,
                                     layout=W.Layout(width="130px"))
        self.steps = W.IntSlider(value=steps or default_steps(model), min=2, max=100)
        self.workflow = W.Dropdown(options=WORKFLOWS, value="inpaint")

        # 2. Each workflow's own options (shown for the chosen one).
        self.region = W.Dropdown(options=REGIONS, value="hair")
        self.new_prompt = W.Text(value="a girl with long blue hair", placeholder="the prompt for the masked part")
        self.strength = W.FloatSlider(value=0.8, min=0.05, max=1.0, step=0.05)
        self.hires_scale = W.FloatSlider(value=1.5, min=1.25, max=2.0, step=0.25)
        self.expressions = W.Text(value="neutral, smiling, angry, surprised")
        self.left_prompt = W.Text(value="a girl with red hair")
        self.right_prompt = W.Text(value="a boy with blue hair")
        # Turnarounds and expression sheets: re-roll views below min identity (one control, shown in both).
        self.identity = IdentityControls()
        self.options = {
            "inpaint": W.VBox([labelled("region", self.region), labelled("new prompt", self.new_prompt),
                               labelled("strength", self.strength)]),
            "detail": W.VBox([W.HTML("Redraws the face and hands, boxes from the pose.")]),
            "hires": W.VBox([labelled("upscale", self.hires_scale)]),
            "turnaround": W.VBox([W.HTML("Front, three-quarter, side and back views."), self.identity.widget]),
            "expressions": W.VBox([labelled("expressions", self.expressions), self.identity.widget]),
            "regions": W.VBox([labelled("left", self.left_prompt), labelled("right", self.right_prompt)]),
        }
        self.options_box = W.VBox([self.options["inpaint"]])
        self.workflow.observe(lambda _c: self._show_options(), names="value")

        self.run_button = W.Button(description="Run", button_style="primary", icon="play")
        self.cancel_button = W.Button(description="Cancel", button_style="warning", icon="stop")
        self.status = StatusLine()
        self.progress = ProgressPanel(previews=False)
        self.before_image = W.Image(value=blank_png(), format="png", layout=W.Layout(width=f"{VIEW}px"))
        self.after_image = W.Image(value=blank_png(), format="png", layout=W.Layout(width=f"{VIEW}px"))
        self.before_label, self.after_label = W.HTML("<b>before</b>"), W.HTML("<b>after</b>")
        self.identity_strip = IdentityStrip()  # a sheet's pictures, each with its identity score

        self.draft = DraftPanel(self, rerun=lambda: self.run(full=True))  # Draft switch and Finish (#38)
        self.runner = Runner(self.status, busy=[self.run_button, self.model, self.workflow, self.draft.finish_button],
                             cancel_button=self.cancel_button, progress=self.progress)
        self.run_button.on_click(lambda _b: self.run())
        settings = W.VBox([
            labelled("model", self.model), labelled("design", self.design.widget), labelled("pose", self.pose),
            labelled("seed", self.seed), labelled("steps", self.steps), labelled("workflow", self.workflow),
            self.options_box, W.HBox([self.run_button, self.cancel_button, self.progress.widget]), self.draft.widget,
            self.status.widget])
        pictures = W.HBox([W.VBox([self.before_label, self.before_image]), W.VBox([self.after_label, self.after_image])])
        # Pictures under the settings, not beside them: before (256 px) and a wide after (up to 512 px)
        # side by side need the notebook's whole width.
        self.widget = W.VBox([settings, pictures, self.identity_strip.widget])
        self._css_hooks("workflows", self.after_image)

    def _show_options(self) -> None:
        self.options_box.children = [self.options[self.workflow.value]]

    def _base_settings(self) -> dict[str, Any]:
        return dict(seed=int(self.seed.value), num_inference_steps=int(self.steps.value))

    def run(self, full: bool = False) -> bool:
        """Draw the design, run the chosen workflow on it, show before and after (`full`: Draft's Finish)."""
        if self.runner.running:
            return False
        self.progress.reset()
        self.identity_strip.clear()
        workflow = self.workflow.value
        identity = self.identity.kwargs()  # read now: the job may wait behind another run
        speed, drafted = self.draft.kwargs(full), (self.draft.drafted if full else None)

        def job(token: CancelToken) -> Any:
            loaded = self.studio
            # Every picture the workflow draws, and the start of each, goes through the app's
            # cancel token (RunHooks), so Cancel stops within one step or between two pictures.
            studio = RunHooks(loaded, token)
            design, pose = self.design.value(), self.pose.value
            hooks = dict(progress=self.progress.report, cancel=token)
            settings = {**self._base_settings(), **speed}
            with exclusive(loaded, token):
                if workflow == "regions":
                    return self._two_characters(studio, design, settings, hooks)
                if workflow == "turnaround":
                    sheet = studio.turnaround(design, **settings, **hooks, compute_score=False, **identity)
                    return sheet.images[0], sheet, sheet.grid_image
                if workflow == "expressions":
                    names = [n.strip() for n in self.expressions.value.split(",") if n.strip()]
                    sheet = studio.expressions(design, names, pose=pose, **settings, **hooks, compute_score=False,
                                               **identity)
                    return sheet.images[0], sheet, sheet.grid_image
                if workflow == "hires":
                    big = studio.generate(design, pose=pose, hires=float(self.hires_scale.value), **settings, **hooks)
                    first = big.extras.get("first_pass") or []
                    return (first[0] if first else None), big, big.image
                base = studio.generate(design, pose=pose, **settings, **hooks)
                if workflow == "inpaint":
                    after = studio.inpaint(base, mask=self.region.value, prompt=self.new_prompt.value or None,
                                           strength=float(self.strength.value), **settings, **hooks)
                else:
                    after = studio.detail(base, parts=("face", "hands"), steps=int(self.steps.value), **hooks)
                return base.image, after, after.image

        def done(value: Any) -> None:
            self.before, self.result, shown = value
            self.show_pictures(self.before, shown)
            if workflow in ("turnaround", "expressions"):
                self.identity_strip.show(self.result)
                line = summary_line(self.result)
                note = getattr(self.result, "identity_note", None)
                (self.status.warn if note else self.status.ok)(f"{TITLES[workflow]}: done" + (f"; {line}" if line else ""))
                return
            self.status.ok(f"{TITLES[workflow]}: done")

        return self.runner.start(TITLES[workflow], *self.draft.wrap(job, done, drafted))

    def show_pictures(self, before: Any, after: Any) -> None:
        """Before and after, drawn at the same scale: a picture of the same size shows at the same
        size (the image widgets' widths follow the pictures, so none is stretched); a wide sheet
        (turnaround, expressions) keeps its width, at most twice the view."""
        scale = VIEW / max(after.width, after.height) if after.width <= after.height * 1.5 else 2 * VIEW / after.width
        if before is not None:
            scale = min(scale, VIEW / max(before.width, before.height))
            width = max(1, round(before.width * scale))
            self.before_image.value = png_bytes(before, width)
            self.before_image.layout.width = f"{width}px"
        width = max(1, round(after.width * scale))
        self.after_image.value = png_bytes(after, width)
        self.after_image.layout.width = f"{width}px"

    def _two_characters(self, studio: RunHooks, design: Any, settings: dict, hooks: dict) -> tuple:
        """The design as the shared scene, two poses side by side, left and right prompts."""
        from ..pose.compose import side_by_side

        side = studio.default_size
        width, height = (side * 2, side) if side < 256 else (side * 3 // 2 // 8 * 8, side)
        pose = side_by_side(self.pose.value, self.pose.value, width=width, height=height)
        scene = f"{self.left_prompt.value} and {self.right_prompt.value}"
        common = dict(pose=pose, width=width, height=height, **settings, **hooks)
        plain = studio.generate(scene, **common)
        two = studio.generate(scene, regions=[{"prompt": self.left_prompt.value, "box": "left"},
                                              {"prompt": self.right_prompt.value, "box": "right"}], **common)
        return plain.image, two, two.image
