"""03 Interpolate: morph one design into another, mix styles with sliders, animate between poses."""

from __future__ import annotations

import html
import logging
import random
from typing import TYPE_CHECKING, Any, Callable

import ipywidgets as W

from ..callbacks import CancelToken, StepProgress
from ..config import MAX_SEED, GenerationConfig
from ..errors import ConfigError
from ..models.presets import preset_examples
from .common import (
    AppBase,
    DesignPicker,
    Gallery,
    ProgressPanel,
    Runner,
    StatusLine,
    TempFiles,
    blank_png,
    error_text,
    figure_png,
    labelled,
    png_bytes,
)
from .session import SIZES, RunHooks, StudioSource, default_guidance, default_steps, exclusive, model_choices

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)

VIEW = 256


class FramesView:
    """A frame scrubber (slider + image), an animated GIF, and a caption per frame."""

    def __init__(self, files: TempFiles, title: str):
        self.files = files
        self.frames: list[Any] = []
        self.captions: list[str] = []
        self.slider = W.IntSlider(value=1, min=1, max=1, description="frame", disabled=True,
                                  layout=W.Layout(width="420px"))
        self.slider.observe(lambda _c: self._show(), names="value")
        self.image = W.Image(value=blank_png(), format="png", layout=W.Layout(width=f"{VIEW}px"))
        self.caption = W.HTML(value="")
        self.gif = W.Image(value=blank_png(), format="png", layout=W.Layout(width=f"{VIEW}px"))
        self.gif_path: str | None = None
        self.widget = W.VBox([W.HTML(f"<b>{html.escape(title)}</b>"), self.slider,
                              W.HBox([W.VBox([W.HTML("frame"), self.image, self.caption]),
                                      W.VBox([W.HTML("animation"), self.gif])])])

    def set(self, frames: list[Any], captions: list[str], fps: float = 6.0) -> None:
        from ..media import save_gif

        self.frames, self.captions = list(frames), list(captions)
        self.slider.max = max(1, len(frames))  # frames count from 1, like the GIF's
        self.slider.value = 1
        self.slider.disabled = len(frames) < 2
        self._show()
        if len(frames) >= 2:
            path = save_gif(frames, self.files.path(".gif"), fps=fps, boomerang=True, overwrite=True)
            self.gif_path = str(path)
            self.gif.format = "gif"
            self.gif.value = self.files.read(path)

    def _show(self) -> None:
        if not self.frames:
            return
        i = min(int(self.slider.value), len(self.frames)) - 1
        self.image.value = png_bytes(self.frames[i], VIEW)
        self.caption.value = html.escape(self.captions[i]) if i < len(self.captions) else ""


class InterpolateApp(AppBase):
    """Design A -> design B (`interpolation.interpolate`), style mixes and pose-to-pose animation.

    Pass `gallery=explore_app.gallery` to interpolate between pictures made in the Explore app.
    """

    def __init__(self, studio: Studio | None = None, *, model: str = "mini", device: str | None = None,
                 gallery: Gallery | None = None, steps: int | None = None, size: int | None = None,
                 frames: int = 6, output_dir: str = "outputs"):
        from ..character import load_styles
        from ..pose import list_poses
        from ..schedulers import SCHEDULERS

        self.source = StudioSource(studio, model, device)
        model = self.source.model
        self.files = TempFiles()
        self.interpolation: Any = None  # latest interpolation.Interpolation
        self.mix: Any = None  # latest StyleMix
        self.animation: Any = None  # latest pose animation Result
        self.calls: list[tuple[str, dict]] = []  # (core function, its arguments), newest last

        # 1. Shared sampling settings. DDIM by default: it is deterministic, so frames change smoothly.
        self.model = W.Combobox(value=model, options=model_choices(), ensure_option=False)
        self.steps = W.IntSlider(value=steps or default_steps(model), min=1, max=100)
        self.guidance = W.FloatSlider(value=default_guidance(model), min=0.0, max=20.0, step=0.5)
        self.scheduler = W.Dropdown(options=list(SCHEDULERS), value="ddim")
        self.size = W.Dropdown(options=[("model's native", 0)] + [(str(s), s) for s in SIZES], value=size or 0,
                               layout=W.Layout(width="140px"))

        # 2. Design A -> B.
        (card_a, card_b), _ = preset_examples(model)  # cards in words the model knows
        self.design_a = DesignPicker(gallery, card=card_a)
        self.design_b = DesignPicker(gallery, card=card_b)
        self.seed_a = W.BoundedIntText(value=random.randint(0, 99_999), min=0, max=MAX_SEED - 64,
                                       layout=W.Layout(width="130px"))
        self.seed_b = W.BoundedIntText(value=random.randint(0, 99_999), min=0, max=MAX_SEED - 64,
                                       layout=W.Layout(width="130px"))
        self.frames = W.IntSlider(value=frames, min=2, max=32)
        self.method = W.Dropdown(options=["slerp", "lerp"], value="slerp")
        self.uniform = W.Checkbox(value=False, description="even spacing (about 3x the renders)", indent=False,
                                  layout=W.Layout(width="auto"))
        self.interpolate_button = W.Button(description="Interpolate", button_style="primary", icon="play")
        self.morph_view = FramesView(self.files, "A -> B")
        self.output_dir = W.Text(value=output_dir, layout=W.Layout(width="200px"))
        self.save_button = W.Button(description="Save frames + GIF", icon="save", layout=W.Layout(width="auto"),
                                    tooltip="PNG frames carrying their recipes, an index JSON and the GIF")
        self.save_button.on_click(lambda _b: self.save())
        self.smoothness = W.HTML(value="")
        self.smoothness_plot = W.Image(value=blank_png(), format="png", layout=W.Layout(width="380px"))

        # 3. Style mix: one weight slider per style preset.
        self.mix_design = DesignPicker(gallery, card=card_a)
        self.mix_seed = W.BoundedIntText(value=random.randint(0, 99_999), min=0, max=MAX_SEED - 64,
                                         layout=W.Layout(width="130px"))
        self.style_weights = {name: W.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05, description=name,
                                                  readout_format=".2f", style={"description_width": "90px"})
                              for name in sorted(load_styles())}
        names = list(self.style_weights)
        for name in names[:2]:
            self.style_weights[name].value = 0.5
        self.mix_button = W.Button(description="Mix styles", icon="sliders")
        self.mix_image = W.Image(value=blank_png(), format="png", layout=W.Layout(width=f"{VIEW}px"))
        self.mix_info = W.HTML(value="")

        # 4. Pose to pose.
        poses = list_poses()
        self.anim_design = DesignPicker(gallery, card=card_a)
        self.anim_seed = W.BoundedIntText(value=random.randint(0, 99_999), min=0, max=MAX_SEED - 64,
                                          layout=W.Layout(width="130px"))
        self.pose_a = W.Dropdown(options=poses, value="standing_front" if "standing_front" in poses else poses[0])
        self.pose_b = W.Dropdown(options=poses, value="waving" if "waving" in poses else poses[-1])
        self.anim_frames = W.IntSlider(value=frames, min=2, max=32)
        self.animate_button = W.Button(description="Animate", icon="film")
        self.anim_view = FramesView(self.files, "pose A -> pose B")

        self.cancel_button = W.Button(description="Cancel", button_style="warning", icon="stop")
        self.status = StatusLine()
        self.progress = ProgressPanel(preview_size=96)
        self.runner = Runner(self.status, busy=[self.interpolate_button, self.mix_button, self.animate_button,
                                                self.model], cancel_button=self.cancel_button,
                             progress=self.progress)
        self.interpolate_button.on_click(lambda _b: self.run_interpolation())
        self.mix_button.on_click(lambda _b: self.run_mix())
        self.animate_button.on_click(lambda _b: self.run_animation())

        common = W.VBox([W.HTML("<b>Settings for every tab</b>"), labelled("model", self.model),
                         labelled("steps", self.steps), labelled("guidance", self.guidance),
                         labelled("scheduler", self.scheduler), labelled("size", self.size)])

        def run_row(button: W.Button) -> W.VBox:
            # Cancel, the progress bar and the status sit beside each tab's own button. The three
            # tabs show the same widgets (ipywidgets keeps every view of a widget in sync).
            return W.VBox([W.HBox([button, self.cancel_button, self.progress.widget]), self.status.widget])
        morph = W.VBox([
            W.HBox([W.VBox([W.HTML("<b>Design A</b>"), self.design_a.widget, labelled("seed", self.seed_a, "40px")]),
                    W.VBox([W.HTML("<b>Design B</b>"), self.design_b.widget,
                            labelled("seed", self.seed_b, "40px")])]),
            labelled("frames", self.frames), labelled("method", self.method), self.uniform,
            run_row(self.interpolate_button), self.morph_view.widget,
            W.HBox([self.save_button, W.Label("to"), self.output_dir]),
            W.HBox([self.smoothness, self.smoothness_plot])])
        mix = W.VBox([labelled("design", self.mix_design.widget), labelled("seed", self.mix_seed),
                      W.HTML("weights (normalised to sum to 1; 0 = not used)"), *self.style_weights.values(),
                      run_row(self.mix_button), W.HBox([self.mix_image, self.mix_info])])
        anim = W.VBox([labelled("design", self.anim_design.widget), labelled("seed", self.anim_seed),
                       labelled("from pose", self.pose_a), labelled("to pose", self.pose_b),
                       labelled("frames", self.anim_frames), run_row(self.animate_button), self.anim_view.widget])
        self.tabs = W.Tab(children=[morph, mix, anim])
        for i, title in enumerate(["Design A -> B", "Style mix", "Pose to pose"]):
            self.tabs.set_title(i, title)
        self.widget = W.VBox([common, self.tabs])
        self._css_hooks("interpolate", self.morph_view.image)


    def settings(self) -> dict[str, Any]:
        """Sampling settings shared by the three tabs, as `make_config` keywords."""
        size = self.size.value or None
        return dict(num_inference_steps=int(self.steps.value), guidance_scale=float(self.guidance.value),
                    scheduler=self.scheduler.value, width=size, height=size)

    def end_recipe(self, picker: DesignPicker, seed: int, studio: Studio | None = None) -> GenerationConfig:
        """One end of the morph as a recipe: gallery recipes as they are, cards/prompts with our settings."""
        design = picker.value()
        if isinstance(design, GenerationConfig):
            return design
        return (studio or self.studio).make_config(design, extra=picker.extra(), seed=int(seed), **self.settings())

    def _hooked(self, studio: Studio, token: CancelToken, total: int) -> RunHooks:
        """The studio with Cancel and a progress bar that counts renders and their steps."""
        hooked: RunHooks

        def report(p: StepProgress) -> None:
            # p.image .. p.image + p.batch - 1: the renders this UNet call draws together.
            renders = max(total, p.images)
            last = p.image + p.batch - 1
            done = (p.image - 1 + p.step / p.steps * p.batch) / renders
            shown = f"{p.image}-{last}" if last > p.image else f"{p.image}"
            self.progress.fraction(done, f"render {shown}/{renders}, step {p.step}/{p.steps}")

        hooked = RunHooks(studio, token, progress=report)
        return hooked

    def _start(self, label: str, job: Callable[[CancelToken], Any], done: Callable[[Any], None]) -> bool:
        if self.runner.running:
            return False
        self.progress.reset()
        return self.runner.start(label, job, done)

    # -- A -> B ------------------------------------------------------------------------------------
    def run_interpolation(self) -> bool:
        frames, method, uniform = int(self.frames.value), self.method.value, bool(self.uniform.value)

        def job(token: CancelToken) -> Any:
            from ..interpolation import interpolate

            studio = self.studio
            a = self.end_recipe(self.design_a, self.seed_a.value, studio)
            b = self.end_recipe(self.design_b, self.seed_b.value, studio)
            self.calls.append(("interpolate", dict(a=a, b=b, frames=frames, method=method, uniform=uniform)))
            with exclusive(studio, token):
                return interpolate(self._hooked(studio, token, 3 * frames if uniform else frames), a, b,
                                   frames=frames, method=method, uniform=uniform)

        def done(result: Any) -> None:
            self.interpolation = result
            self.morph_view.set(result.frames, [f"t = {t:.3f}" for t in result.ts])
            self._show_smoothness(result)
            self.status.ok(f"{len(result.frames)} frames from {result.renders} renders; "
                           f"evenness {result.smoothness.evenness:.3f}")

        return self._start("Interpolate", job, done)

    def save(self) -> list[Any]:
        """Write the latest A -> B frames (with recipes), their index and the GIF to a new folder."""
        from pathlib import Path

        if self.interpolation is None:
            self.status.warn("nothing to save yet: press Interpolate first")
            return []
        base = Path(self.output_dir.value.strip() or "outputs")
        n = 1
        while (base / f"interpolation-{n:03d}").exists():
            n += 1
        folder = base / f"interpolation-{n:03d}"
        try:
            # Frames, index and GIF appear together or not at all (one staged folder).
            paths = list(self.interpolation.save(folder, gif="animation.gif", field="output folder"))
            paths.append(folder / "animation.gif")
        except Exception as exc:
            self.status.error(f"Save failed: {error_text(exc)}")
            return []
        self.status.ok(f"saved {len(paths) - 1} frames, their index and the GIF in {folder}")
        return paths

    def _show_smoothness(self, result: Any) -> None:
        from matplotlib.figure import Figure

        s = result.smoothness
        rows = [("change between frames (mean)", f"{s.mean:.4f}"), ("largest change", f"{s.max:.4f}"),
                ("evenness (1 - Gini; 1 = perfectly even)", f"{s.evenness:.3f}"),
                ("measured in", html.escape(s.space))]
        if result.before is not None:
            rows.insert(3, ("evenness with equal t steps", f"{result.before.evenness:.3f}"))
        self.smoothness.value = ("<b>Smoothness</b><table>" + "".join(
            f"<tr><td>{k}</td><td style='padding-left:12px'>{v}</td></tr>" for k, v in rows) + "</table>")
        fig = Figure(figsize=(4.2, 2.4))
        ax = fig.subplots()
        ax.bar(range(1, len(s.distances) + 1), s.distances, color="tab:blue",
               label="even spacing" if result.before is not None else "equal t")
        if result.before is not None:
            ax.plot(range(1, len(result.before.distances) + 1), result.before.distances, "o-", color="tab:orange",
                    label="equal t")
            ax.legend(fontsize=7)
        ax.set_xticks(range(1, len(s.distances) + 1))
        ax.set_xlabel("between frame i and i+1", fontsize=8)
        ax.set_ylabel(f"change ({s.space})", fontsize=8)
        ax.tick_params(labelsize=7)
        self.smoothness_plot.value = figure_png(fig)

    # -- style mix -------------------------------------------------------------------------------
    def weights(self) -> dict[str, float]:
        """Style weights from the sliders (zero weights left out)."""
        return {name: float(s.value) for name, s in self.style_weights.items() if s.value > 0}

    def run_mix(self) -> bool:
        weights = self.weights()

        def job(token: CancelToken) -> Any:
            from ..interpolation import mix_styles

            if not weights:
                raise ConfigError("styles", "all 0", "move at least one style slider above 0")
            studio = self.studio
            design = self.mix_design.value()
            if isinstance(design, GenerationConfig):
                raise ConfigError("design", "a gallery recipe", "a style mix needs a card or a prompt (it re-styles it)")
            args = dict(seed=int(self.mix_seed.value), extra=self.mix_design.extra(), **self.settings())
            self.calls.append(("mix_styles", dict(design=design, styles=weights, **args)))
            with exclusive(studio, token):
                return mix_styles(self._hooked(studio, token, 1), design, weights, **args)

        def done(mix: Any) -> None:
            self.mix = mix
            self.mix_image.value = png_bytes(mix.images[0], VIEW)
            parts = ", ".join(f"{k} {v:.2f}" for k, v in mix.weights.items())
            self.mix_info.value = f"<small>{html.escape(parts)}<br>seed {mix.recipe.seed}</small>"
            self.status.ok(f"style mix: {parts}")

        return self._start("Mix styles", job, done)

    # -- pose to pose ----------------------------------------------------------------------------
    def run_animation(self) -> bool:
        frames, pose_a, pose_b = int(self.anim_frames.value), self.pose_a.value, self.pose_b.value

        def job(token: CancelToken) -> Any:
            from ..interpolation import pose_animation

            studio = self.studio
            design = self.anim_design.value()
            if isinstance(design, GenerationConfig):
                raise ConfigError("design", "a gallery recipe", "pose animation needs a card or a prompt")
            args = dict(seed=int(self.anim_seed.value), extra=self.anim_design.extra(), **self.settings())
            self.calls.append(("pose_animation", dict(design=design, pose_a=pose_a, pose_b=pose_b, frames=frames,
                                                      **args)))
            with exclusive(studio, token):
                return pose_animation(self._hooked(studio, token, frames), design, pose_a, pose_b, frames, **args)

        def done(result: Any) -> None:
            self.animation = result
            ts = result.extras.get("ts") or [i / max(1, len(result.images) - 1) for i in range(len(result.images))]
            self.anim_view.set(result.images, [f"t = {t:.2f}, seed {r.seed}" for t, r in zip(ts, result.recipes)])
            self.status.ok(f"{len(result.images)} frames from {pose_a} to {pose_b}")

        return self._start("Animate", job, done)
