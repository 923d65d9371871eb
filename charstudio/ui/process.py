"""04 Diffusion process: watch x_t and the predicted x0 step by step, the noise schedule,
per-token attention, and two samplers (or step counts) side by side."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from ..callbacks import CancelToken, StepProgress
from ..config import MAX_SEED, GenerationConfig
from ..models.presets import preset_examples
from .common import (
    AppBase,
    DesignPicker,
    ProgressPanel,
    Runner,
    StatusLine,
    TempFiles,
    blank_png,
    error_text,
    labelled,
    png_bytes,
    step_hook,
)
from .session import SIZES, StudioSource, default_guidance, default_steps, exclusive, model_choices

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)

VIEW = 256  # displayed size of the step images


class ProcessApp(AppBase):
    """Trace one generation (`Studio.trace`) and explore it; compare two sampler settings.

    >>> app = ProcessApp(model="mini"); app
    >>> app.trace_button.click(); app.wait(); app.step.value = 3
    """

    def __init__(self, studio: Studio | None = None, *, model: str = "mini", device: str | None = None,
                 steps: int | None = None, size: int | None = None,
                 prompt: str | None = None):
        from ..character import load_styles
        from ..schedulers import DEFAULT_SCHEDULER, SCHEDULERS

        self.source = StudioSource(studio, model, device)
        model = self.source.model
        self.files = TempFiles()
        self.trace: Any = None  # the latest charstudio.trace.Trace
        self.result: Any = None
        self.comparison: list[tuple[Any, Any]] = []  # (trace, result) for settings A and B
        self._decoded: dict[tuple[int, str], Any] = {}

        # 1. The run to trace.
        self.model = W.Combobox(value=model, options=model_choices(), ensure_option=False)
        self.design = DesignPicker(prompt=prompt if prompt is not None else preset_examples(model)[1], wide=True)
        self.style = W.Dropdown(options=[("(the card's own)", ""), ("none", "none")]
                                + [(s, s) for s in sorted(load_styles())], value="")
        self.seed = W.BoundedIntText(value=random.randint(0, 99_999), min=0, max=MAX_SEED - 64,
                                     layout=W.Layout(width="130px"))
        self.steps = W.IntSlider(value=steps or default_steps(model), min=2, max=100)
        self.guidance = W.FloatSlider(value=default_guidance(model), min=0.0, max=20.0, step=0.5)
        self.scheduler = W.Dropdown(options=list(SCHEDULERS), value=DEFAULT_SCHEDULER)
        size_options = [("model's native", 0)] + [(str(s), s) for s in SIZES]
        self.size = W.Dropdown(options=size_options, value=size or 0, layout=W.Layout(width="140px"))
        self.decoder = W.Dropdown(options=[("VAE (exact)", "vae"), ("TAESD if cached (cheap)", "auto"),
                                           ("approx (free, blurry)", "approx")],
                                  value="vae")
        self.decoder.observe(lambda _c: self._show_step(), names="value")
        self.trace_button = W.Button(description="Trace", button_style="primary", icon="play")
        self.cancel_button = W.Button(description="Cancel", button_style="warning", icon="stop")
        self.status = StatusLine()
        self.progress = ProgressPanel(previews=False)  # the Steps tab shows every step afterwards

        # 2. Step by step.
        self.step = W.IntSlider(value=1, min=1, max=1, description="step", disabled=True,
                                continuous_update=True, layout=W.Layout(width="520px"))
        self.step.observe(lambda _c: self._show_step(), names="value")
        self.xt_image = W.Image(value=blank_png(), format="png", layout=W.Layout(width=f"{VIEW}px"))
        self.x0_image = W.Image(value=blank_png(), format="png", layout=W.Layout(width=f"{VIEW}px"))
        self.step_info = W.HTML(value="")
        self.schedule_image = W.Image(value=blank_png(), format="png", layout=W.Layout(width="520px"))

        # 3. Attention per token.
        self.token = W.Dropdown(options=[], description="token", disabled=True)
        self.token.observe(lambda _c: self._show_token(), names="value")
        self.heatmap = W.Image(value=blank_png(), format="png", layout=W.Layout(width="260px"))

        # 4. Two settings side by side.
        self.scheduler_a = W.Dropdown(options=list(SCHEDULERS), value="ddim", layout=W.Layout(width="160px"))
        self.steps_a = W.IntSlider(value=self.steps.value, min=2, max=100, layout=W.Layout(width="240px"))
        self.scheduler_b = W.Dropdown(options=list(SCHEDULERS), value="euler-a", layout=W.Layout(width="160px"))
        self.steps_b = W.IntSlider(value=self.steps.value, min=2, max=100, layout=W.Layout(width="240px"))
        self.compare_button = W.Button(description="Compare", icon="columns")
        self.compare_images = [W.Image(value=blank_png(), format="png", layout=W.Layout(width=f"{VIEW}px"))
                               for _ in range(2)]
        self.compare_strips = [W.Image(value=blank_png(), format="png", layout=W.Layout(width="520px"))
                               for _ in range(2)]
        self.compare_labels = [W.HTML(value="") for _ in range(2)]

        self.runner = Runner(self.status, busy=[self.trace_button, self.compare_button, self.model],
                             cancel_button=self.cancel_button, progress=self.progress)
        self.trace_button.on_click(lambda _b: self.run_trace())
        self.compare_button.on_click(lambda _b: self.compare())

        # The design across the top, the prompt as wide as the app: prompts are long.
        design = W.VBox([labelled("design", self.design.source),
                         W.HBox([W.Label("prompt", layout=W.Layout(width="110px", min_width="110px", flex="0 0 auto")),
                                 self.design.prompt], layout=W.Layout(width="100%"))], layout=W.Layout(width="100%"))
        # Settings in two columns above the tabs, so the tabs get the notebook's whole width.
        for control in (self.model, self.style, self.steps, self.guidance, self.scheduler, self.decoder):
            control.layout.width = "260px"

        def run_row(button: W.Button) -> W.VBox:
            # Cancel, progress and status beside the button they belong to (the same widgets in
            # both places: ipywidgets keeps every view of a widget in sync).
            return W.VBox([W.HBox([button, self.cancel_button, self.progress.widget]), self.status.widget])

        settings = W.VBox([
            W.HBox([W.VBox([labelled("model", self.model), labelled("style", self.style), labelled("seed", self.seed),
                            labelled("steps", self.steps)]),
                    W.VBox([labelled("guidance", self.guidance), labelled("scheduler", self.scheduler),
                            labelled("size", self.size), labelled("decode with", self.decoder)])]),
            run_row(self.trace_button)])
        stepper = W.VBox([W.HTML("<b>x_t (what the sampler holds) and predicted x0 (its guess of the final "
                                 "image)</b>"), self.step,
                          W.HBox([W.VBox([W.HTML("x_t"), self.xt_image]), W.VBox([W.HTML("predicted x0"),
                                                                                 self.x0_image])]),
                          self.step_info])
        attention = W.VBox([W.HTML("<b>Where each word looks</b> (cross-attention, mean over layers and steps)"),
                            self.token, self.heatmap])
        compare = W.VBox([
            W.HTML("<b>Side by side</b>: same prompt and seed, two schedulers or step counts"),
            W.HBox([W.Label("A"), self.scheduler_a, self.steps_a]),
            W.HBox([W.Label("B"), self.scheduler_b, self.steps_b]), run_row(self.compare_button),
            W.HBox([W.VBox([self.compare_labels[i], self.compare_images[i]]) for i in range(2)]),
            *self.compare_strips])
        self.tabs = W.Tab(children=[stepper, W.VBox([W.HTML("<b>Noise schedule</b>"), self.schedule_image]),
                                    attention, compare])
        for i, title in enumerate(["Steps", "Noise schedule", "Attention", "Compare"]):
            self.tabs.set_title(i, title)
        self.widget = W.VBox([design, settings, self.tabs])
        self._css_hooks("process", self.x0_image)


    def make_config(self, studio: Studio | None = None, **changes: Any) -> Any:
        """The recipe the controls describe (`changes` override fields, e.g. scheduler)."""
        studio = studio or self.studio
        design = self.design.value()
        size = self.size.value or None
        if isinstance(design, GenerationConfig):  # a recipe from a gallery
            cfg = design.replace(seed=int(self.seed.value), num_inference_steps=int(self.steps.value),
                                 guidance_scale=float(self.guidance.value), scheduler=self.scheduler.value)
        else:
            cfg = studio.make_config(design, style=self.style.value or None, extra=self.design.extra(),
                                     seed=int(self.seed.value), num_inference_steps=int(self.steps.value),
                                     guidance_scale=float(self.guidance.value), scheduler=self.scheduler.value,
                                     width=size, height=size)
        return cfg.replace(**changes) if changes else cfg

    def _report(self, p: StepProgress) -> None:
        self.progress.report(p)

    # -- tracing -----------------------------------------------------------------------------------
    def run_trace(self) -> bool:
        """Generate once while recording every step (Studio.trace)."""
        if self.runner.running:
            return False
        self.progress.reset()

        def job(token: CancelToken) -> Any:
            studio = self.studio
            cfg = self.make_config(studio)
            with exclusive(studio, token):
                return studio.trace(config=cfg, attention=True,
                                    callbacks=[step_hook(token, self._report, cfg.num_inference_steps)])

        def done(value: Any) -> None:
            self.trace, self.result = value
            self._decoded.clear()
            n = len(self.trace.records)
            self.step.max = max(1, n)  # the slider counts steps from 1, as the labels do
            self.step.value = max(1, n)
            self.step.disabled = n == 0
            self._show_step()
            self._show_schedule()
            tokens = [(f"{j}: {t.replace('</w>', '')}", j) for j, t in enumerate(self.trace.tokens)]
            self.token.options = tokens
            self.token.disabled = not tokens
            if tokens:
                self.token.value = tokens[0][1]
            self._show_token()
            self.status.ok(f"traced {n} steps of {self.trace.scheduler}; move the step slider")

        return self.runner.start("Trace", job, done)

    def _decoder(self) -> Any:
        return self.studio.components["vae"] if self.decoder.value == "vae" else self.decoder.value

    def _decode(self, index: int, which: str) -> Any:
        """Decode (and cache) x_t or predicted x0 of step `index`."""
        from ..trace import decode_latents

        key = (index, which + self.decoder.value)
        if key not in self._decoded:
            rec = self.trace.records[index]
            lat = getattr(rec, which)
            if lat is None:
                return None
            lat = lat[:1]
            if which == "latents":
                # Samplers such as Euler keep x_t at scale sqrt(1 + sigma^2); shown raw it is a white-out.
                # Dividing by its spread shows the picture under the noise at every step.
                std = float(lat.std())
                if std > 1.5:
                    lat = lat / std
            self._decoded[key] = decode_latents(lat, self._decoder(), self.studio.family)[0]
        return self._decoded[key]

    def _show_step(self) -> None:
        if self.trace is None or not self.trace.records:
            return
        i = min(int(self.step.value), len(self.trace.records)) - 1
        rec = self.trace.records[i]
        for which, widget in (("latents", self.xt_image), ("pred_x0", self.x0_image)):
            image = self._decode(i, which)
            widget.value = png_bytes(image, VIEW) if image is not None else blank_png()
        snr = rec.snr
        self.step_info.value = (f"step {rec.step + 1} of {len(self.trace.records)}, timestep {rec.timestep:.0f}"
                                + (f", sigma {rec.sigma:.3f}" if rec.sigma is not None else "")
                                + (f", SNR {snr:.4g}" if snr is not None else ""))

    def _show_schedule(self) -> None:
        from ..trace import plot_noise_schedule

        try:
            path = plot_noise_schedule(self.trace, self.files.path(), overwrite=True)
            self.schedule_image.value = self.files.read(path)
        except Exception as exc:  # e.g. a scheduler without alphas_cumprod: say so, keep the rest
            self.status.warn(f"no schedule plot: {error_text(exc)}")

    def _show_token(self) -> None:
        from ..trace import plot_token_heatmaps

        if self.trace is None or self.token.value is None or self.trace.attention is None:
            return
        path = plot_token_heatmaps(self.trace, self.files.path(), words=[int(self.token.value)], overwrite=True)
        self.heatmap.value = self.files.read(path)

    # -- comparing -------------------------------------------------------------------------------
    def compare(self) -> bool:
        """Trace the same design with settings A and B and show them side by side."""
        if self.runner.running:
            return False
        self.progress.reset()
        pairs = [(self.scheduler_a.value, int(self.steps_a.value)), (self.scheduler_b.value, int(self.steps_b.value))]

        def job(token: CancelToken) -> Any:
            studio = self.studio
            out = []
            for k, (sched, steps) in enumerate(pairs):
                cfg = self.make_config(studio, scheduler=sched, num_inference_steps=steps)
                hook = step_hook(token, self._report, steps, image=k + 1, images=2)
                with exclusive(studio, token):
                    out.append(studio.trace(config=cfg, attention=False, callbacks=[hook]))
            return out

        def done(out: Any) -> None:
            from ..trace import plot_filmstrip

            self.comparison = out
            for k, ((trace, result), (sched, steps)) in enumerate(zip(out, pairs)):
                self.compare_images[k].value = png_bytes(result.images[0], VIEW)
                self.compare_labels[k].value = f"<b>{'AB'[k]}</b>: {sched}, {steps} steps"
                path = plot_filmstrip(trace, self.files.path(), decoder=self._decoder(), max_frames=6, overwrite=True)
                self.compare_strips[k].value = self.files.read(path)
            self.status.ok(f"A: {pairs[0][0]} x{pairs[0][1]}  vs  B: {pairs[1][0]} x{pairs[1][1]}")

        return self.runner.start("Compare", job, done)
