"""01 Explore: design characters interactively (card or prompt, style, pose, seed, sampler)."""

from __future__ import annotations

import html
import logging
import os
import random
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from ..callbacks import CancelToken, StepProgress
from ..config import MAX_SEED, GenerationConfig
from ..errors import ConfigError
from .common import (
    AppBase,
    Gallery,
    GalleryItem,
    ProgressPanel,
    Runner,
    StatusLine,
    blank_png,
    error_text,
    labelled,
    picked_card,
    png_bytes,
)
from .card_editor import CardEditor
from .draft import DraftPanel
from .identity_view import IdentityControls, IdentityStrip, summary_line
from .pose_picker import PosePicker
from .session import SIZES, RunHooks, StudioSource, default_guidance, default_steps, exclusive, model_choices

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)

class ExploreApp(AppBase):
    """Controls -> `GenerationConfig` -> `studio.run`, with previews, Cancel and a gallery.

    >>> app = ExploreApp(model="mini"); app        # shows the app in a notebook
    >>> app.prompt.value = "a knight"; app.generate_button.click(); app.wait()
    """

    def __init__(self, studio: Studio | None = None, *, model: str = "mini", device: str | None = None,
                 steps: int | None = None, size: int | None = None, preview_every: int = 5,
                 output_dir: str = "outputs", lora_dir: str = "lora"):
        from ..character import list_characters, load_styles
        from ..schedulers import DEFAULT_SCHEDULER, SCHEDULERS

        self.source = StudioSource(studio, model, device)
        model = self.source.model
        self.last_config: GenerationConfig | None = None  # the config of the latest run (for tests/users)
        self.last_result: Any = None

        # 1. What to draw.
        self.model = W.Combobox(value=model, options=model_choices(), ensure_option=False,
                                placeholder="tiny, sd15, hub id, folder or .safetensors")
        self.card = W.Dropdown(options=[("- none: use the prompt -", "")] + [(c, c) for c in list_characters()],
                               value="")
        self.prompt = W.Textarea(value="", placeholder="a prompt; with a card: extra words (e.g. 'smiling')",
                                 layout=W.Layout(width="330px", height="60px"))
        self.negative = W.Text(value="", placeholder="blank: the card's and style's negatives",
                               layout=W.Layout(width="330px"))
        style_names = sorted(load_styles())
        self.style = W.Dropdown(options=[("(the card's own)", ""), ("none", "none")] + [(s, s) for s in style_names],
                                value="")
        self.style_b = W.Dropdown(options=[("- no mix -", "")] + [(s, s) for s in style_names], value="")
        self.style_mix = W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, readout_format=".2f",
                                       tooltip="weight of the second style")

        # 2. Pose: thumbnails of the library, plus uploads (a pose JSON, or a picture to detect a pose in).
        self.status = StatusLine()
        self.poses = PosePicker(self.status, lambda *a, **k: self.runner.start(*a, **k))
        self.pose_strength = W.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, readout_format=".2f")
        self.consistency = W.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05, readout_format=".2f",
                                         tooltip="Sheet: reference attention to the first pose (0 = off)")

        # 3. Sampling.
        self.seed = W.BoundedIntText(value=random.randint(0, 99_999), min=0, max=MAX_SEED - 64,
                                     layout=W.Layout(width="130px"))
        self.lock_seed = W.Checkbox(value=False, description="lock", indent=False, layout=W.Layout(width="60px"))
        self.dice = W.Button(description="new seed", layout=W.Layout(width="90px"))
        self.dice.on_click(lambda _b: self._new_seed())
        self.steps = W.IntSlider(value=steps or default_steps(model), min=1, max=100)
        self.guidance = W.FloatSlider(value=default_guidance(model), min=0.0, max=20.0, step=0.5)
        self.scheduler = W.Dropdown(options=list(SCHEDULERS), value=DEFAULT_SCHEDULER)
        size_options = [("model's native", 0)] + [(str(s), s) for s in SIZES]
        self.width = W.Dropdown(options=size_options, value=size or 0, layout=W.Layout(width="140px"))
        self.height = W.Dropdown(options=size_options, value=size or 0, layout=W.Layout(width="140px"))
        self.num_images = W.IntSlider(value=1, min=1, max=4)
        self.preview_every = W.IntSlider(value=preview_every, min=1, max=25, tooltip="preview every k steps")
        self.output_dir = W.Text(value=output_dir, layout=W.Layout(width="200px"))
        self.identity = IdentityControls()  # Sheet: re-roll views below min identity (#36)

        # 4. A trained LoRA (lora/NAME/), and saved PNGs whose recipes come back into the controls.
        self.lora_dir = lora_dir
        self.lora = W.Dropdown(options=[("none", "")], value="", layout=W.Layout(width="180px"))
        self.lora_weight = W.FloatSlider(value=1.0, min=0.0, max=1.5, step=0.05, readout_format=".2f",
                                         layout=W.Layout(width="220px"))
        self.lora_refresh = W.Button(description="", icon="refresh", tooltip="look for new LoRAs",
                                     layout=W.Layout(width="36px"))
        self.lora_refresh.on_click(lambda _b: self.refresh_loras())
        self.refresh_loras()
        self._app_lora: str | None = None  # the adapter this app switched on
        self.png_upload = W.FileUpload(accept=".png", multiple=True, description="open PNG")
        self.png_upload.observe(lambda ch: [self.open_png(f["name"], bytes(f["content"])) for f in ch["new"] or ()],
                                names="value")

        # 4. Buttons, progress, output.
        self.generate_button = W.Button(description="Generate", button_style="primary", icon="play")
        self.sheet_button = W.Button(description="Sheet", icon="th", tooltip="the card across the selected poses")
        self.save_button = W.Button(description="Save", icon="save", tooltip="save the selected picture as PNG")
        self.cancel_button = W.Button(description="Cancel", button_style="warning", icon="stop")
        self.progress = ProgressPanel()
        self.image = W.Image(value=blank_png(), format="png", layout=W.Layout(width="320px"))
        self.recipe_view = W.HTML(value="")
        self.identity_strip = IdentityStrip()  # a sheet's pictures, each with its identity score
        self.gallery = Gallery(on_restore=self.restore)
        self.draft = DraftPanel(self)  # the Draft switch and Finish (#38)
        self.runner = Runner(self.status, busy=[self.generate_button, self.sheet_button, self.save_button,
                                                self.model, self.lora, self.draft.finish_button], cancel_button=self.cancel_button,
                             progress=self.progress)
        self.generate_button.on_click(lambda _b: self.generate())
        self.sheet_button.on_click(lambda _b: self.sheet())
        self.save_button.on_click(lambda _b: self.save())

        controls = W.VBox([
            labelled("model", self.model), labelled("card", self.card), labelled("prompt", self.prompt),
            labelled("negative", self.negative), labelled("style", self.style),
            labelled("mix with", W.HBox([self.style_b, self.style_mix])),
            labelled("seed", W.HBox([self.seed, self.lock_seed, self.dice])),
            labelled("steps", self.steps), labelled("guidance", self.guidance),
            labelled("scheduler", self.scheduler), labelled("size (w x h)", W.HBox([self.width, self.height])),
            labelled("images", self.num_images), labelled("preview every", self.preview_every), self.identity.widget,
            labelled("LoRA", W.HBox([self.lora, self.lora_refresh, self.lora_weight])),
            labelled("save to", W.HBox([self.output_dir, self.png_upload])),
        ])
        poses = W.VBox([W.HTML("<b>Pose</b> (none selected: no ControlNet; Generate uses the first selected, "
                               "Sheet all of them)"),
                        self.poses.widget,
                        W.HBox([self.poses.upload, W.Label("pose strength"), self.pose_strength]),
                        W.HBox([W.Label("sheet consistency (reference attention)"), self.consistency])])
        buttons = W.HBox([self.generate_button, self.sheet_button, self.save_button, self.cancel_button])
        output = W.VBox([self.progress.widget, self.image, self.recipe_view], layout=W.Layout(overflow="visible"))
        self.card_editor = CardEditor(self.status)  # the picked card's fields; Save writes its YAML
        self.card.observe(lambda ch: self.card_editor.pick(ch["new"]), names="value")
        editor = W.Accordion(children=[self.card_editor.widget], titles=("Card editor",), selected_index=None)
        self.widget = W.VBox([W.HBox([controls, output]), poses, buttons, self.draft.widget, self.status.widget,
                              self.identity_strip.widget, editor, self.gallery.widget])
        # Stable CSS hooks for browser tests and for users' own styling.
        for w, name in ((self.widget, "explore"), (self.gallery.grid, "gallery"), (self.image, "image"),
                        (self.status.widget, "status"), (self.recipe_view, "recipe"), (self.prompt, "prompt")):
            w.add_class(f"charstudio-{name}")
        self._css_hooks("explore", self.image)

    # -- poses (the picker: `pose_picker.PosePicker`) ------------------------------------------
    @property
    def pose_order(self) -> list[str]:
        """The selected poses in the order they were clicked."""
        return self.poses.order

    @property
    def pose_buttons(self) -> dict[str, W.ToggleButton]:
        return self.poses.buttons

    def select_poses(self, names: list[str]) -> None:
        """Select exactly these poses (library names or uploaded/restored ones), in this order."""
        self.poses.select(names)

    def add_pose(self, name: str, pose: Any, select: bool = True) -> str:
        """Add a pose (a `Pose`) to the picker under `name` (made unique) and select it."""
        return self.poses.add(name, pose, select)

    def load_pose_file(self, filename: str, data: bytes) -> None:
        """A pose JSON is read at once; a picture goes to the pose detector in the background."""
        self.poses.load_file(filename, data)

    def _pose(self, name: str) -> Any:
        return self.poses.get(name)

    # -- controls <-> recipe ----------------------------------------------------------------------
    def controls(self) -> dict[str, Any]:
        """The current widget values (what `set_controls` restores)."""
        return {"model": self.model.value, "card": self.card.value, "prompt": self.prompt.value,
                "negative": self.negative.value, "style": self.style.value, "style_b": self.style_b.value,
                "style_mix": self.style_mix.value, "poses": list(self.pose_order),
                "pose_strength": self.pose_strength.value, "consistency": self.consistency.value, "seed": self.seed.value, "lock_seed": self.lock_seed.value,
                "steps": self.steps.value, "guidance": self.guidance.value, "scheduler": self.scheduler.value,
                "width": self.width.value, "height": self.height.value, "num_images": self.num_images.value,
                "lora": self.lora.value, "lora_weight": self.lora_weight.value, "draft": self.draft.switch.value}

    def set_controls(self, values: dict[str, Any]) -> None:
        widgets = {"model": self.model, "card": self.card, "prompt": self.prompt, "negative": self.negative,
                   "style": self.style, "style_b": self.style_b, "style_mix": self.style_mix,
                   "pose_strength": self.pose_strength, "consistency": self.consistency, "seed": self.seed, "lock_seed": self.lock_seed,
                   "steps": self.steps, "guidance": self.guidance, "scheduler": self.scheduler,
                   "width": self.width, "height": self.height, "num_images": self.num_images,
                   "lora_weight": self.lora_weight, "draft": self.draft.switch}
        for key, w in widgets.items():
            if key in values:
                w.value = values[key]
        if "poses" in values:
            self.select_poses([p for p in values["poses"] if p in self.pose_buttons])
        if "lora" in values:
            self.refresh_loras()
            known = {v for _, v in self.lora.options}
            self.lora.value = values["lora"] if values["lora"] in known else ""
            if values["lora"] not in known:
                self.status.warn(f"LoRA {values['lora']!r} is not under {self.lora_dir}; generating without it")

    def restore(self, item: GalleryItem) -> None:
        """Put a gallery picture's recipe back into the controls, seed locked, so Generate remakes it.

        A restore that cannot be exact (its LoRA is gone, its size is not offered) keeps that
        warning on the status line instead of promising the same picture."""
        self.status.info("")
        if item.controls:
            self.set_controls({**item.controls, "num_images": 1})
        elif item.recipe is not None:
            self.set_recipe(item.recipe)
        self.lock_seed.value = True
        self.image.value = png_bytes(item.image, 320)
        self._show_recipe(item.recipe)
        label = item.label or "a picture"
        if self.status.level == "warn":
            self.status.warn(f"restored {label}, but {self.status.text}: Generate will not make the same picture")
        else:
            self.status.info(f"restored {label}; Generate makes it again")

    def set_recipe(self, recipe: GenerationConfig) -> None:
        """Controls from a bare recipe (e.g. a PNG from disk): the final prompt text, no card/style."""
        from ..pose import Pose
        from ..pose.compose import load_people
        from ..speed.draft import finish

        draft, recipe = bool(recipe.draft), finish(recipe)  # a draft: its full settings, Draft on (#38)
        size = set(SIZES)
        poses: list[str] = []
        if recipe.pose is not None:
            pose = load_people(recipe.pose)  # a PoseGroup when the picture holds several people
            for name in self.pose_buttons if isinstance(pose, Pose) else ():
                candidate = self._pose(name)
                if isinstance(candidate, Pose) and candidate.fit(recipe.width, recipe.height).isclose(pose, atol=1e-3):
                    poses = [name]
                    break
            else:
                poses = [self.add_pose("restored", pose, select=False)]
        self.set_controls({
            "model": recipe.model or self.model.value, "card": "", "prompt": recipe.prompt,
            "negative": recipe.negative_prompt, "style": "none", "style_b": "", "seed": recipe.seed,
            "lock_seed": True, "steps": recipe.num_inference_steps, "guidance": recipe.guidance_scale,
            "scheduler": recipe.scheduler, "width": recipe.width if recipe.width in size else 0,
            "height": recipe.height if recipe.height in size else 0, "num_images": 1, "poses": poses,
            "pose_strength": recipe.controlnet_conditioning_scale, "draft": draft,
            **({"lora": next(iter(recipe.loras)), "lora_weight": next(iter(recipe.loras.values()))}
               if recipe.loras else {"lora": ""})})
        if recipe.width not in size or recipe.height not in size:
            self.status.warn(f"size {recipe.width}x{recipe.height} is not in the size list; using the model's native")

    def _new_seed(self) -> None:
        self.seed.value = random.randint(0, 99_999_999)

    def settings(self) -> dict[str, Any]:
        """The controls as they are now, poses resolved: what a click runs with.

        A run that waits (behind training, or another app's run) must not read the widgets
        when it finally starts: the user may have edited them meanwhile.
        """
        values = self.controls()
        values["preview_every"] = int(self.preview_every.value)
        values["pose_objects"] = {n: self._pose(n) for n in values["poses"]}
        values["identity"] = self.identity.kwargs()
        return values

    @staticmethod
    def _subject(values: dict[str, Any]) -> tuple[str, str]:
        """(card name or prompt, extra words)."""
        if values["card"]:
            return picked_card(values["card"]), values["prompt"].strip()
        return values["prompt"].strip(), ""

    @staticmethod
    def _sampling(values: dict[str, Any]) -> dict[str, Any]:
        """The sampling settings every action shares, as `Studio` keywords."""
        return dict(num_inference_steps=int(values["steps"]), guidance_scale=float(values["guidance"]),
                    width=values["width"] or None, height=values["height"] or None,
                    negative_prompt=values["negative"].strip() or None, scheduler=values["scheduler"],
                    controlnet_conditioning_scale=float(values["pose_strength"]), **({"speed": "draft"} if values.get("draft") else {}))

    def make_config(self, studio: Studio | None = None, poses: list[str] | None = None,
                    values: dict[str, Any] | None = None) -> GenerationConfig:
        """The recipe the controls (or a `settings()` snapshot) describe, for the first selected
        pose or `poses[0]`."""
        studio = studio or self.studio
        v = values or self.settings()
        subject, extra = self._subject(v)
        names = v["poses"] if poses is None else poses
        pose = (v["pose_objects"].get(names[0]) or self._pose(names[0])) if names else None
        return studio.make_config(subject, style=v["style"] or None, extra=extra, seed=int(v["seed"]),
                                  num_images=int(v["num_images"]), pose=pose, **self._sampling(v))

    @staticmethod
    def _mixing(values: dict[str, Any]) -> bool:
        return bool(values["style_b"]) and values["style_mix"] > 0

    def _show_recipe(self, recipe: GenerationConfig | None) -> None:
        self.draft.show(recipe)
        if recipe is None:
            self.recipe_view.value = ""
            return
        escape = html.escape
        extra = f", pose strength {recipe.controlnet_conditioning_scale}" if recipe.pose else ""
        self.recipe_view.value = (f"<small><b>{escape(recipe.prompt[:200])}</b><br>seed {recipe.seed}, "
                                  f"{recipe.num_inference_steps} steps, {recipe.scheduler}, cfg {recipe.guidance_scale}, "
                                  f"{recipe.width}x{recipe.height}{extra}</small>")

    # -- actions ---------------------------------------------------------------------------------
    def _prepare_seed(self) -> None:
        if not self.lock_seed.value:
            self._new_seed()

    def _report(self, p: StepProgress) -> None:
        self.progress.report(p)

    def generate(self) -> bool:
        """Start a run from the controls; False when one is already running."""
        if self.runner.running:
            return False
        self._prepare_seed()
        values = self.settings()  # read now: the job may wait behind another run
        snapshot = {k: v for k, v in values.items() if k not in ("preview_every", "pose_objects", "identity")}
        mixing = self._mixing(values)
        self.progress.reset()
        self.identity_strip.clear()  # a sheet's scores do not belong to this picture

        def job(token: CancelToken) -> Any:
            from ..trace import LivePreview

            studio = self.studio
            # At least one preview per picture, even when k exceeds the number of steps.
            every = max(1, min(values["preview_every"], int(values["steps"])))
            preview = LivePreview(self.progress.show_preview, every=every)
            with exclusive(studio, token):
                self._apply_lora(studio, values)
                if mixing:
                    return self._mix(studio, token, preview, values)
                config = self.make_config(studio, values=values)
                self.last_config = config
                return studio.run(config, callbacks=[preview], progress=self._report, cancel=token)

        def done(result: Any) -> None:
            self.last_result = result
            for image, recipe in zip(result.images, result.recipes):
                label = f"{recipe.character or recipe.prompt[:24]} s{recipe.seed}"
                controls = {**snapshot, "seed": recipe.seed, "lock_seed": True, "num_images": 1}
                self.gallery.add(image, recipe, f"{label} (mix)" if mixing else label, controls)
            self.image.value = png_bytes(result.images[0] if len(result.images) == 1 else result.grid(), 320)
            self._show_recipe(result.recipes[0])
            self.status.ok(f"made {len(result.images)} picture(s); seed {result.recipes[0].seed}")

        return self.runner.start("Generate", job, done)

    def _mix(self, studio: Studio, token: CancelToken, preview: Any, values: dict[str, Any]) -> Any:
        """Two styles mixed in embedding space (charstudio.interpolation.mix_styles)."""
        from ..interpolation import mix_styles
        from ..result import Result

        style_a, style_b = values["style"], values["style_b"]
        if style_a in ("", "none"):
            if not values["card"]:
                raise ConfigError("style", style_a or "(card's own)", "pick a first style to mix with the second")
            from ..character import load_character

            style_a = load_character(values["card"], field="card").style
            if not style_a:
                raise ConfigError("style", "(card's own)", f"card {values['card']!r} has no style; pick one")
        if style_a == style_b:
            raise ConfigError("style_b", style_b, "pick a different style from the first")
        w = float(values["style_mix"])
        subject, extra = self._subject(values)
        hooked = RunHooks(studio, token, progress=self._report, callbacks=[preview])
        settings = dict(seed=int(values["seed"]), num_images=int(values["num_images"]), extra=extra,
                        **self._sampling(values))
        if values["poses"]:
            settings["pose"] = values["pose_objects"][values["poses"][0]]
        mix = mix_styles(hooked, subject, {style_a: 1.0 - w, style_b: w}, **settings)
        self.last_config = mix.recipe
        recipes = [mix.recipe.replace(seed=mix.recipe.seed + i) for i in range(len(mix.images))]
        return Result(mix.images, recipes, {"style_weights": mix.weights})

    def sheet(self) -> bool:
        """The card (or prompt) across every selected pose with one seed: `Studio.sheet`."""
        if self.runner.running:
            return False
        self._prepare_seed()
        values = self.settings()  # read now: the job may wait behind another run
        snapshot = {k: v for k, v in values.items() if k not in ("preview_every", "pose_objects", "identity")}
        names = list(values["poses"])
        self.progress.reset()
        self.identity_strip.clear()

        def job(token: CancelToken) -> Any:
            studio = self.studio
            if not names:
                raise ConfigError("poses", "none selected", "select one or more poses for the sheet")
            subject, extra = self._subject(values)
            with exclusive(studio, token):
                self._apply_lora(studio, values)
                return studio.sheet(subject, [values["pose_objects"][n] for n in names],
                                    **self.sheet_args(token, names, extra, values))

        def done(result: Any) -> None:
            self.last_result = result
            for image, recipe, pose in zip(result.images, result.recipes, names):
                controls = {**snapshot, "poses": [pose], "lock_seed": True, "num_images": 1, "seed": recipe.seed}
                self.gallery.add(image, recipe, f"sheet {pose} s{recipe.seed}", controls)
            grid = getattr(result, "grid_image", None) or result.grid()
            self.image.value = png_bytes(grid, 480)
            self._show_recipe(result.recipes[0])
            score = getattr(result, "score", None)
            self.identity_strip.show(result)
            text = (f"sheet of {len(result.images)} poses; seed {result.recipes[0].seed}"
                    + (f"; consistency {score:.3f}" if score is not None else "") + (f"; {summary_line(result)}" if summary_line(result) else ""))
            (self.status.warn if getattr(result, "identity_note", None) else self.status.ok)(text)

        return self.runner.start("Sheet", job, done)

    def sheet_args(self, token: CancelToken, names: list[str], extra: str,
                   values: dict[str, Any] | None = None) -> dict[str, Any]:
        """Keyword arguments for `Studio.sheet` from the controls (or a `settings()` snapshot)."""
        v = values or self.settings()
        from ..trace import LivePreview

        def report(p: StepProgress) -> None:
            # The sheet reports over all its poses (those drawn in one batch together).
            self._report(p)

        return dict(
            seed=int(v["seed"]), labels=[n.replace("_", " ") for n in names],
            reference_strength=float(v["consistency"]), style=v["style"] or None, extra=extra,
            progress=report, cancel=token, **self._sampling(v), **v.get("identity", {}),
            callbacks=[LivePreview(self.progress.show_preview,
                                   every=max(1, min(v["preview_every"], int(v["steps"]))))])

    # -- LoRA and PNG files --------------------------------------------------------------------------
    def refresh_loras(self) -> None:
        """List the trained LoRAs under `lora_dir` (e.g. one the Train app just saved)."""
        from ..lora import list_loras

        current = self.lora.value
        names = list_loras(self.lora_dir)
        self.lora.options = [("none", "")] + [(n, n) for n in names]
        self.lora.value = current if current in names else ""

    def _apply_lora(self, studio: Studio, values: dict[str, Any]) -> None:
        """Switch the chosen LoRA on at its weight (or ours off); recipes then record it."""
        name, weight = values["lora"], float(values["lora_weight"])
        if self._app_lora and self._app_lora != name and self._app_lora in studio.active_loras:
            # Another (or no) LoRA was picked: the one this app switched on goes off; others stay.
            studio.set_loras({k: v for k, v in studio.active_loras.items() if k != self._app_lora})
        self._app_lora = studio.load_lora(name, weight=weight, lora_dir=self.lora_dir) if name else None

    def open_png(self, filename: str, data: bytes) -> GalleryItem | None:
        """Read a saved PNG's recipe (ours or A1111's), add it to the gallery and restore it."""
        import tempfile

        from ..result import Result
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, os.path.basename(filename) or "image.png")
            with open(path, "wb") as f:
                f.write(data)
            try:
                loaded = self.source.loaded  # its family reads A1111's "Clip skip"; none loaded: guessed
                result = Result.from_png(path, family=getattr(loaded, "family", None))
            except Exception as exc:
                self.status.error(f"{filename}: {error_text(exc)}")
                return None
        item = self.gallery.add(result.image, result.recipe, os.path.basename(filename))
        self.restore(item)
        return item

    def save(self) -> list[Any]:
        """Save the selected (latest or restored) picture as PNG with its recipe; returns paths."""
        from ..result import Result
        item = self.gallery.selected
        if item is None or item.recipe is None:
            self.status.warn("nothing to save yet: generate a picture first")
            return []
        try:
            paths = Result([item.image], [item.recipe]).save(self.output_dir.value or "outputs")
        except Exception as exc:
            self.status.error(f"Save failed: {error_text(exc)}")
            return []
        self.status.ok(f"saved {paths[0]}")
        return paths
