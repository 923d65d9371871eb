"""02 Train LoRA: a dataset with editable captions, training with a live loss plot and
validation images, Stop/Resume, and a before/after comparison at several LoRA weights."""

from __future__ import annotations

import contextlib
import html
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from ..callbacks import CancelToken
from ..errors import ConfigError
from .common import (
    AppBase,
    Gallery,
    ProgressPanel,
    Runner,
    StatusLine,
    blank_png,
    error_text,
    figure_png,
    labelled,
    png_bytes,
)
from .identity_view import identity_figure
from .session import RunHooks, StudioSource, exclusive, model_choices

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)

THUMB = 112
SWEEP_WEIGHTS = (0.0, 0.5, 1.0)


class DatasetView:
    """The training images with one editable caption each (kohya style: NAME.txt beside NAME.png)."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.images: list[Path] = []
        self.captions: dict[Path, W.Textarea] = {}
        self.grid = W.GridBox(layout=W.Layout(grid_template_columns=f"repeat(auto-fill, {THUMB + 120}px)",
                                              max_height="360px", overflow="auto"))
        self.info = W.HTML(value="no dataset loaded")
        self.widget = W.VBox([self.info, self.grid])

    def load(self, folder: str | os.PathLike, placeholder: str) -> int:
        """Show every image in `folder` with its caption; returns the number of images."""
        from PIL import Image

        from ..training import list_dataset

        images, caption_files = list_dataset(folder)
        self.folder, self.images, self.captions = Path(folder), images, {}
        cells = []
        for path in images:
            text = ""
            if path.stem in caption_files:
                text = caption_files[path.stem].read_text(encoding="utf-8", errors="replace").strip()
            box = W.Textarea(value=text, placeholder=f"(none: '{placeholder}')",
                             layout=W.Layout(width=f"{THUMB + 110}px", height="48px"))
            self.captions[path] = box
            try:
                with Image.open(path) as im:
                    thumb = png_bytes(im.convert("RGB"), THUMB)
            except Exception:  # a broken file is reported by the trainer; show a blank here
                thumb = blank_png()
            cells.append(W.VBox([W.Image(value=thumb, format="png", layout=W.Layout(width=f"{THUMB}px")),
                                 W.HTML(value=f"<small>{html.escape(path.name)}</small>"), box]))
        self.grid.children = tuple(cells)
        self.info.value = f"{len(images)} images in <code>{html.escape(str(folder))}</code>"
        return len(images)

    def save_captions(self) -> int:
        """Write edited captions to NAME.txt (an emptied caption removes its file); returns files changed."""
        from ..io_utils import atomic_write

        changed = 0
        for path, box in self.captions.items():
            txt = path.with_suffix(".txt")
            text = " ".join(box.value.split())
            old = txt.read_text(encoding="utf-8", errors="replace").strip() if txt.exists() else ""
            if text == old:
                continue
            if text:
                atomic_write(txt, lambda tmp, t=text: tmp.write_text(t + "\n", encoding="utf-8"), overwrite=True)
            else:
                txt.unlink(missing_ok=True)
            changed += 1
        return changed


class TrainApp(AppBase):
    """Widgets -> `LoraTrainingConfig` -> `training.train_lora`, step by step on a worker thread.

    Pass `gallery=explore_app.gallery` to train on the pictures ticked there.
    """

    def __init__(self, studio: Studio | None = None, *, model: str = "mini", device: str | None = None,
                 gallery: Gallery | None = None, data_dir: str = "", steps: int = 200,
                 output_dir: str = "lora"):
        self.source = StudioSource(studio, model, device)
        self.gallery = gallery
        self.history: list[tuple[int, float]] = []  # (step, loss) of the current run
        self.records: list[Any] = []  # every TrainingStep of the current run
        self.identity_points: list[dict[str, Any]] = []  # TrainingStep.identity of the validation steps
        self.files: dict[str, Path] = {}  # final outputs of the last finished run
        self.comparison: Any = None  # Result of the before/after sweep
        self.stopped_at: int | None = None
        self.last_config: Any = None

        # 1. Data.
        self.data_dir = W.Text(value=data_dir, placeholder="folder of 5-50 images of one character",
                               layout=W.Layout(width="360px"))
        self.load_button = W.Button(description="Load", icon="folder-open")
        self.picks_button = W.Button(description="Use gallery picks", icon="images", layout=W.Layout(width="auto"),
                                     tooltip="copy the pictures ticked in the Explore gallery into a dataset folder",
                                     disabled=gallery is None)
        self.save_captions_button = W.Button(description="Save captions", icon="save", layout=W.Layout(width="auto"))
        self.dataset = DatasetView()

        # 2. Options (the common ones; everything else keeps LoraTrainingConfig's defaults).
        self.model = W.Combobox(value=self.source.model, options=model_choices(), ensure_option=False,
                                layout=W.Layout(width="260px"))
        self.name = W.Text(value="my-character", layout=W.Layout(width="200px"))
        self.trigger = W.Text(value="sks", layout=W.Layout(width="120px"))
        self.class_word = W.Text(value="person", layout=W.Layout(width="120px"))
        self.steps = W.BoundedIntText(value=steps, min=1, max=100_000, layout=W.Layout(width="120px"))
        self.rank = W.Dropdown(options=[4, 8, 16, 32, 64], value=16, layout=W.Layout(width="120px"))
        self.lora_layers = W.Dropdown(options=[("attention", "attention"), ("whole transformer blocks", "transformer")],
                                      value="attention", layout=W.Layout(width="200px"))
        self.learning_rate = W.FloatLogSlider(value=1e-4, base=10, min=-6, max=-1, step=0.1, readout_format=".1e",
                                              layout=W.Layout(width="240px"))
        self.lr_scheduler = W.Dropdown(options=["constant", "cosine", "linear", "constant_with_warmup"],
                                       value="constant", layout=W.Layout(width="180px"))
        self.batch_size = W.BoundedIntText(value=1, min=1, max=256, layout=W.Layout(width="120px"))
        # Min-SNR-gamma loss weighting: 0 = off; 5 is the usual value.
        self.snr_gamma = W.BoundedFloatText(value=0.0, min=0.0, max=100.0, step=1.0, layout=W.Layout(width="120px"),
                                            tooltip="0: off; 5 is the usual value")
        self.validation_steps = W.BoundedIntText(value=max(1, steps // 4), min=0, max=100_000,
                                                 layout=W.Layout(width="120px"))
        self.checkpointing_steps = W.BoundedIntText(value=max(1, steps // 4), min=1, max=100_000,
                                                    layout=W.Layout(width="120px"))
        self.validation_inference_steps = W.BoundedIntText(value=20, min=1, max=200, layout=W.Layout(width="120px"))
        self.resolution = W.Dropdown(options=[("model's native", 0)] + [(str(r), r) for r in (64, 128, 256, 384, 512,
                                                                                           640, 768, 1024)],
                                     value=0, layout=W.Layout(width="140px"))
        self.train_text_encoder = W.Checkbox(value=False, description="also train the text encoder", indent=False,
                                              layout=W.Layout(width="auto"))
        self.train_text_encoder_2 = W.Checkbox(value=False, indent=False, layout=W.Layout(width="auto"),
                                               description="also train the second text encoder (SDXL)")
        self.flip = W.Checkbox(value=False, description="random horizontal flips", indent=False,
                                layout=W.Layout(width="auto"))
        # Ticked by Load when every image has a NAME.pose.json beside it.
        self.pose_conditioning = W.Checkbox(value=False, description="train with each image's pose (NAME.pose.json)",
                                            indent=False, layout=W.Layout(width="auto"))
        # Prior preservation: also train on pictures the base model draws of the class prompt.
        self.prior_preservation = W.Checkbox(value=False, indent=False, layout=W.Layout(width="auto"),
                                             description="prior preservation (class images)",
                                             tooltip="also train on pictures the base model draws of the class prompt")
        self.class_prompt = W.Text(value="", placeholder="blank: a picture of a CLASS WORD",
                                   layout=W.Layout(width="260px"))
        self.num_class_images = W.BoundedIntText(value=50, min=1, max=10_000, layout=W.Layout(width="120px"))
        self.seed = W.BoundedIntText(value=0, min=0, max=2**31, layout=W.Layout(width="120px"))
        self.output_dir = W.Text(value=output_dir, layout=W.Layout(width="200px"))
        self.overwrite = W.Checkbox(value=False, description="replace an existing LoRA of this name", indent=False,
                                     layout=W.Layout(width="auto"))

        # 3. Run controls and live output.
        self.start_button = W.Button(description="Start", button_style="primary", icon="play")
        self.stop_button = W.Button(description="Stop", button_style="warning", icon="stop")
        self.resume_button = W.Button(description="Resume", icon="step-forward",
                                      tooltip="continue from the newest checkpoint")
        self.status = StatusLine()
        self.progress = ProgressPanel(previews=False)  # training has no step previews
        self.loss_plot = W.Image(value=blank_png(), format="png", layout=W.Layout(width="400px", display="none"))
        # Trained vs weight-0 identity over the validation steps, beside the loss (wraps under it when narrow).
        self.identity_plot = W.Image(value=blank_png(), format="png", layout=W.Layout(width="400px", display="none"))
        # Pictures wrap onto more rows rather than scroll out of sight beside the options.
        self.validation = W.HBox(layout=W.Layout(flex_flow="row wrap", width="100%"))
        self.comparison_images = W.HBox(layout=W.Layout(flex_flow="row wrap"))  # one per LoRA weight, labelled
        self.comparison_info = W.HTML(value="")

        # Without a gallery the picks button stays off, so it is not among the buttons a run re-enables.
        busy = [self.start_button, self.resume_button, self.load_button, self.save_captions_button, self.model]
        self.runner = Runner(self.status, busy=busy + ([self.picks_button] if gallery is not None else []),
                             cancel_button=self.stop_button, progress=self.progress)
        self.load_button.on_click(lambda _b: self.load_dataset())
        self.picks_button.on_click(lambda _b: self.use_gallery_picks())
        self.save_captions_button.on_click(lambda _b: self.save_captions())
        self.start_button.on_click(lambda _b: self.start())
        self.resume_button.on_click(lambda _b: self.start(resume=True))

        data = W.VBox([W.HTML("<b>1. Dataset</b>"), W.HBox([self.data_dir, self.load_button, self.picks_button]),
                       self.dataset.widget, self.save_captions_button])
        def field(label: str, widget: W.Widget) -> W.HBox:
            return labelled(label, widget, "140px")  # the longest label, "checkpoint every", fits

        options = W.VBox([W.HTML("<b>2. Training options</b>"), field("model", self.model),
                          field("LoRA name", self.name), field("trigger word", self.trigger),
                          field("class word", self.class_word), field("steps", self.steps),
                          field("rank", self.rank), field("LoRA layers", self.lora_layers),
                          field("learning rate", self.learning_rate),
                          field("lr schedule", self.lr_scheduler),
                          field("batch size", self.batch_size), field("min-SNR gamma", self.snr_gamma),
                          field("resolution", self.resolution),
                          field("validate every", self.validation_steps),
                          field("sample steps", self.validation_inference_steps),
                          field("checkpoint every", self.checkpointing_steps), field("seed", self.seed),
                          field("save under", self.output_dir), self.train_text_encoder,
                          self.train_text_encoder_2, self.flip,
                          self.pose_conditioning, self.prior_preservation,
                          field("class prompt", self.class_prompt),
                          field("class images", self.num_class_images), self.overwrite],
                         layout=W.Layout(flex="0 0 auto"))  # the options keep their width; the run column gives
        run = W.VBox([W.HTML("<b>3. Train</b>"), W.HBox([self.start_button, self.stop_button, self.resume_button]),
                      self.progress.widget, self.status.widget,
                      W.HBox([self.loss_plot, self.identity_plot], layout=W.Layout(flex_flow="row wrap")),
                      W.HTML("validation samples"), self.validation,
                      W.HTML("<b>4. Before / after</b> (the same seed at several LoRA weights)"),
                      self.comparison_images, self.comparison_info], layout=W.Layout(flex="1 1 auto", min_width="0"))
        self.widget = W.VBox([data, W.HBox([options, run])])
        self._css_hooks("train", self.loss_plot)


    # -- dataset ---------------------------------------------------------------------------------
    def _instance_prompt(self) -> str:
        return f"a picture of {self.trigger.value.strip() or 'sks'} {self.class_word.value.strip() or 'person'}"

    def load_dataset(self) -> int:
        """Show the folder's images and captions; returns how many (0 on error, shown in the status)."""
        try:
            n = self.dataset.load(self.data_dir.value.strip(), self._instance_prompt())
        except Exception as exc:
            self.status.error(f"Load failed: {error_text(exc)}")
            return 0
        from ..pose import pose_file

        posed = sum(pose_file(p).is_file() for p in self.dataset.images)
        self.pose_conditioning.value = n > 0 and posed == n
        poses = "every one with its pose (pose conditioning on)" if self.pose_conditioning.value else \
            f"{posed} with a pose file" if posed else "no pose files"
        self.status.ok(f"{n} images, {poses}; edit captions and press Save captions, or Start")
        return n

    def save_captions(self) -> int:
        try:
            n = self.dataset.save_captions()
        except Exception as exc:
            self.status.error(f"Saving captions failed: {error_text(exc)}")
            return 0
        self.status.ok(f"saved {n} caption file(s)")
        return n

    def use_gallery_picks(self, folder: str | None = None) -> int:
        """Write the gallery's ticked pictures (with their recipes) into a dataset folder and load it."""
        from ..io_utils import ensure_dir
        from ..result import Result

        picks = self.gallery.picks() if self.gallery is not None else []
        if not picks:
            self.status.warn("tick the 'pick' box under some gallery pictures first")
            return 0
        target = folder or os.path.join("datasets", self.name.value.strip() or "picks")
        try:
            out = ensure_dir(target, "data_dir")
            for item in picks:
                Result([item.image], [item.recipe]).save(out)
        except Exception as exc:
            self.status.error(f"Copying picks failed: {error_text(exc)}")
            return 0
        self.data_dir.value = str(out)
        return self.load_dataset()

    # -- training ---------------------------------------------------------------------------------
    # LoraTrainingConfig fields the controls hold, by control; `apply_settings` sets them.
    SETTING_CONTROLS = {"max_train_steps": "steps", "trigger_word": "trigger", "rank": "rank",
                        "lora_layers": "lora_layers", "learning_rate": "learning_rate", "lr_scheduler": "lr_scheduler",
                        "batch_size": "batch_size", "snr_gamma": "snr_gamma", "train_text_encoder": "train_text_encoder",
                        "train_text_encoder_2": "train_text_encoder_2",
                        "pose_conditioning": "pose_conditioning", "flip": "flip", "seed": "seed",
                        "class_word": "class_word", "model": "model",
                        "with_prior_preservation": "prior_preservation", "class_prompt": "class_prompt",
                        "num_class_images": "num_class_images"}
    # What a control shows for a config's None.
    _NONE_AS = {"snr_gamma": 0.0, "class_prompt": ""}

    def apply_settings(self, settings: dict[str, Any]) -> None:
        """Set the controls from `LoraTrainingConfig` keyword arguments (e.g. a recipe's settings).

        Fields the controls do not hold keep the config's defaults; ``alpha`` must equal ``rank`` (the
        app trains with alpha = rank). A value a control cannot hold (outside a slider's range, not a
        dropdown option) raises ConfigError naming the field, instead of being clamped silently.
        """
        if "alpha" in settings and float(settings["alpha"]) != float(settings.get("rank", self.rank.value)):
            raise ConfigError("alpha", settings["alpha"], f"equal to rank ({settings.get('rank', self.rank.value)}): "
                              "the Train app trains with alpha = rank")
        before = {c: getattr(self, c).value for c in set(self.SETTING_CONTROLS.values())}
        try:
            self._set_controls(settings)
        except ConfigError:
            for control, value in before.items():  # all or nothing: a refused setting changes no control
                getattr(self, control).value = value
            raise

    def _set_controls(self, settings: dict[str, Any]) -> None:
        for field, value in settings.items():
            control = self.SETTING_CONTROLS.get(field)
            if control is None:
                continue
            widget = getattr(self, control)
            want = self._NONE_AS.get(field, value) if value is None else value
            options = [o[1] if isinstance(o, tuple) else o for o in getattr(widget, "options", ())]
            if options and not isinstance(widget, W.Combobox) and want not in options:
                raise ConfigError(field, value, f"one of {options}")
            try:
                widget.value = want
            except Exception as exc:  # noqa: BLE001 - traitlets' own error types vary by widget
                raise ConfigError(field, value, f"a value the {control} control can hold ({exc})") from exc
            got = widget.value
            if got != want and not (isinstance(want, float) and abs(got - want) <= 1e-9 * max(1.0, abs(want))):
                lo, hi = getattr(widget, "min", None), getattr(widget, "max", None)
                hint = f"between {widget.base ** lo:g} and {widget.base ** hi:g}" if hasattr(widget, "base") else \
                    f"between {lo} and {hi}"
                raise ConfigError(field, value, f"a value {hint} (the control would hold {got!r})")

    def make_config(self, resume: bool = False) -> Any:
        """The `LoraTrainingConfig` the controls describe."""
        from ..training import LoraTrainingConfig

        if not self.data_dir.value.strip():
            raise ConfigError("data_dir", "", "choose a folder of images (or use the gallery's picks)")
        steps = int(self.steps.value)
        return LoraTrainingConfig(
            data_dir=self.data_dir.value.strip(), name=self.name.value.strip(), model=self.model.value.strip(),
            output_dir=self.output_dir.value.strip() or "lora", trigger_word=self.trigger.value.strip(),
            class_word=self.class_word.value.strip() or "person", resolution=self.resolution.value or None,
            max_train_steps=steps, rank=int(self.rank.value), alpha=float(self.rank.value),
            lora_layers=self.lora_layers.value,
            learning_rate=float(self.learning_rate.value), lr_scheduler=self.lr_scheduler.value,
            train_text_encoder=bool(self.train_text_encoder.value),
            train_text_encoder_2=bool(self.train_text_encoder_2.value),
            batch_size=int(self.batch_size.value), snr_gamma=float(self.snr_gamma.value) or None,
            flip=bool(self.flip.value), pose_conditioning=bool(self.pose_conditioning.value), seed=int(self.seed.value),
            with_prior_preservation=bool(self.prior_preservation.value),
            class_prompt=self.class_prompt.value.strip() or None, num_class_images=int(self.num_class_images.value),
            validation_steps=int(self.validation_steps.value),
            validation_inference_steps=int(self.validation_inference_steps.value),
            checkpointing_steps=min(int(self.checkpointing_steps.value), steps),
            resume=resume, overwrite=bool(self.overwrite.value) and not resume)

    def start(self, resume: bool = False) -> bool:
        """Train (or resume) on the worker thread; Stop ends it after the current step."""
        if self.runner.running:
            return False
        self.progress.reset()
        if not resume:
            self.validation.children = ()
        # Nothing of the previous run stays on screen as if it belonged to this one: its loss curve
        # and before/after row go now, and the curve comes back with this run's first step.
        self.loss_plot.value = blank_png()
        self.loss_plot.layout.display = "none"
        self.identity_plot.value, self.identity_plot.layout.display, self.identity_points = blank_png(), "none", []
        self.comparison_images.children = ()
        self.comparison_info.value = ""
        self.comparison = None
        self.stopped_at = None

        def job(token: CancelToken) -> Any:

            if self.dataset.captions and self.dataset.folder == Path(self.data_dir.value.strip()):
                self.dataset.save_captions()  # train on what the user sees
            config = self.make_config(resume)
            self.last_config = config
            studio = self.studio
            self.history, self.records = [], []
            with exclusive(studio, token):
                steps = studio.train_lora(config, cancel=token)  # Stop ends sample pictures mid-way too
                try:
                    for record in steps:
                        self._on_step(record)
                        if token.cancelled and not record.done:
                            self.stopped_at = record.step
                            break
                finally:
                    steps.close()  # on Stop: train_lora keeps its last checkpoint for Resume
                if self.stopped_at is not None:
                    return None
                final = self.records[-1] if self.records else None
                self.files = dict(final.files) if final is not None else {}
                return self._before_after(studio, config, token)

        def done(comparison: Any) -> None:
            if self.stopped_at is not None:
                from ..training import list_checkpoints

                ckpts = list_checkpoints(self.make_config(True).lora_dir)
                last = ckpts[-1].name if ckpts else "none yet"
                self.status.warn(f"stopped at step {self.stopped_at}; last checkpoint: {last}. Resume continues from it")
                return
            where = self.files.get("diffusers") or next(iter(self.files.values()), None)
            self.status.ok(f"trained {len(self.history)} steps; LoRA saved in {Path(where).parent if where else '?'}")

        return self.runner.start("Training", job, done)

    def _on_step(self, record: Any) -> None:
        self.records.append(record)
        self.history.append((record.step, record.loss))
        self.progress.fraction(record.step / record.total_steps,
                               f"step {record.step}/{record.total_steps}, loss {record.loss:.4f}")
        # Redraw the plot about 40 times per run, so plotting never costs more than training.
        every = max(1, record.total_steps // 40)
        if record.step % every == 0 or record.done or record.images:
            self.loss_plot.value = self._loss_figure()
            self.loss_plot.layout.display = ""
        if getattr(record, "identity", None):
            self.identity_points.append(dict(record.identity))
            self.identity_plot.value, self.identity_plot.layout.display = identity_figure(self.identity_points), ""
        if record.images:
            cells = [W.VBox([W.Image(value=png_bytes(im, 128), format="png", layout=W.Layout(width="128px")),
                             W.HTML(value=f"<small>step {record.step}</small>")]) for im in record.images]
            self.validation.children = (*self.validation.children, *cells)

    def _loss_figure(self) -> bytes:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5, 2.4))
        ax = fig.subplots()
        steps = [s for s, _ in self.history]
        losses = [v for _, v in self.history]
        ax.plot(steps, losses, color="tab:blue", lw=0.8, alpha=0.5, label="loss")
        if len(losses) >= 5:  # a running mean shows the trend under the per-step noise
            k = max(2, len(losses) // 10)
            smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1])
                      for i in range(len(losses))]
            ax.plot(steps, smooth, color="tab:red", lw=1.5, label=f"mean of {k}")
            ax.legend(fontsize=7)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        return figure_png(fig)

    def _validation_prompt(self, config: Any) -> str:
        """The prompt the run validated with, as its training_config.json records it."""
        path = self.files.get("config")
        if path is not None and Path(path).is_file():
            recorded = json.loads(Path(path).read_text(encoding="utf-8")).get("resolved", {}).get("validation_prompt")
            if recorded:
                return str(recorded)
        return config.resolved_validation_prompt()

    def _before_after(self, studio: Studio, config: Any, token: CancelToken) -> Any:
        """The validation prompt at LoRA weights 0 (before), 0.5 and 1 (after), one seed."""
        if not hasattr(studio, "load_lora") or not hasattr(studio, "set_loras"):
            self.comparison_info.value = ("<small>before/after needs Studio.load_lora and Studio.set_loras, which "
                                          "this charstudio version does not have</small>")
            return None
        path = self.files.get("diffusers") or self.files.get("kohya")
        if path is None:
            raise ConfigError("lora", None, "training finished without writing the LoRA file")
        if hasattr(studio, "unload_lora"):
            # A re-train under the same name must replace the adapter loaded from the old weights.
            with contextlib.suppress(ConfigError):
                studio.unload_lora(config.name)
        adapter = studio.load_lora(str(path), weight=1.0, adapter_name=config.name)
        adapter = adapter if isinstance(adapter, str) else config.name
        size = config.resolution or None
        prompt = self._validation_prompt(config)
        # Through the app's cancel token (RunHooks): Stop also ends the before/after pictures.
        sweep = RunHooks(studio, token).lora_sweep(prompt, adapter, list(SWEEP_WEIGHTS), seed=config.seed, width=size,
                                                   height=size, num_inference_steps=config.validation_inference_steps)
        self.comparison = sweep
        labels = [f"weight {w:g}" + (" (before)" if w == 0 else "") for w in SWEEP_WEIGHTS]
        self.comparison_images.children = tuple(
            W.VBox([W.Image(value=png_bytes(im, 160), format="png", layout=W.Layout(width="160px")),
                    W.HTML(value=f"<small>{label}</small>")]) for im, label in zip(sweep.images, labels))
        self.comparison_info.value = (f"<small>'{html.escape(prompt)}', seed {config.seed}. "
                                      f"The LoRA stays loaded as <code>{html.escape(adapter)}</code> at weight "
                                      f"{studio.active_loras.get(adapter, 1.0):g}.</small>")
        return sweep
