"""Issue #34 item 2: every list a user gives has one bound, checked before any model work; Cancel
stops every app's job within one denoising step, and a job between two pictures before the next
picture's work starts. Steps are counted (UNet calls), never seconds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from charstudio.errors import ConfigError
from charstudio.limits import MAX_FRAMES, MAX_ITEMS

TOO_MANY = MAX_ITEMS + 1


# -- the one bound -----------------------------------------------------------------------------
class Untouchable:
    """Stands in for a Studio: any use of it means work started before the list was checked."""

    def __getattr__(self, name):
        raise AssertionError(f"studio.{name} was used before the list was refused")


def refused(fn, field: str, bound: int = MAX_ITEMS) -> str:
    with pytest.raises(ConfigError) as info:
        fn()
    text = str(info.value)
    assert info.value.field == field and "\n" not in text
    assert f"at most {bound} " in text, text
    return text


def test_one_bound_shared_by_every_list_and_frames_fold_into_it():
    from charstudio.limits import check_frames, check_list

    assert MAX_FRAMES == MAX_ITEMS
    text = refused(lambda: check_frames(TOO_MANY), "frames")
    assert "split it into several runs" in text and f"MAX_ITEMS = {MAX_ITEMS}" in text
    # A list is counted, never expanded: an endless generator is refused after MAX_ITEMS + 1 items.
    refused(lambda: check_list("poses", itertools.count()), "poses")
    assert check_list("poses", iter(["a", "b"])) == ["a", "b"] and check_list("poses", "a") == ["a"]


def test_every_api_list_is_refused_before_the_studio_is_used():
    from charstudio.interpolation import interpolate, mix_styles, pose_animation
    from charstudio.studio import Studio
    from charstudio.workflows.expressions import resolve_expressions

    stub = Untouchable()
    names = [f"e{i}" for i in range(10_000)]  # the expression sheet
    assert "10000 expressions" in refused(lambda: Studio.expressions(stub, "a knight", names), "expressions")
    refused(lambda: resolve_expressions(f"e{i}" for i in itertools.count()), "expressions")
    refused(lambda: Studio.turnaround(stub, "a knight", ["front"] * TOO_MANY), "views")
    refused(lambda: Studio.sheet(stub, "a knight", ["standing_front"] * TOO_MANY), "poses")
    refused(lambda: Studio.lora_sweep(stub, "a knight", "hero", [0.5] * TOO_MANY), "weights")
    refused(lambda: mix_styles(stub, "a knight", {f"s{i}": 1.0 for i in range(TOO_MANY)}), "styles")
    refused(lambda: pose_animation(stub, "a knight", "standing_front", "waving", frames=TOO_MANY), "frames")
    refused(lambda: interpolate(stub, "a", "b", frames=TOO_MANY), "frames")


def test_every_recipe_list_is_bounded():
    from charstudio.config import GenerationConfig
    from charstudio.workflows.regions import MAX_REGIONS

    refused(lambda: GenerationConfig("a knight", loras={f"l{i}": 1.0 for i in range(TOO_MANY)}), "loras")
    refused(lambda: GenerationConfig("a knight", embeddings={f"w{i}": f"w{i}.safetensors" for i in range(TOO_MANY)}),
            "embeddings")
    mix = [{"style": "s", "weight": 1.0, "prompt": "p", "negative_prompt": ""}] * TOO_MANY
    refused(lambda: GenerationConfig("a knight", style_mix=mix), "style_mix")
    regions = [{"prompt": "a girl", "box": [i, 0, i + 1, 8]} for i in range(MAX_REGIONS + 1)]
    text = refused(lambda: GenerationConfig("a knight", width=64, height=64, regions=regions), "regions", MAX_REGIONS)
    assert "merge regions" in text  # says what to do instead
    assert len(GenerationConfig("a knight", loras={f"l{i}": 1.0 for i in range(MAX_ITEMS)}).loras) == MAX_ITEMS


@pytest.mark.parametrize("argv, flag, bound", [
    (["expressions", "a knight", "--expressions", ",".join(f"e{i}" for i in range(10_000))], "--expressions", MAX_ITEMS),
    (["turnaround", "a knight", "--views", ",".join(["front"] * TOO_MANY)], "--views", MAX_ITEMS),
    (["sheet", "a knight", "--poses", ",".join(["standing_front"] * TOO_MANY)], "--poses", MAX_ITEMS),
    (["generate", "a knight", *itertools.chain.from_iterable(["--lora", f"l{i}"] for i in range(TOO_MANY))],
     "--lora", MAX_ITEMS),
    (["generate", "a knight", *itertools.chain.from_iterable(["--embedding", f"w{i}"] for i in range(TOO_MANY))],
     "--embedding", MAX_ITEMS),
    (["generate", "a knight", *itertools.chain.from_iterable(["--region", "left:a girl"] for _ in range(9))],
     "--region", 8),
    (["generate", "a knight", "--pose", "+".join(["standing_front"] * TOO_MANY)], "--pose", MAX_ITEMS),
])
def test_cli_refuses_a_long_list_in_one_line_before_the_model_loads(argv, flag, bound, tmp_path, capsys):
    """The model path does not exist: the list error still comes first, so it is checked first."""
    from charstudio.cli import main

    out = tmp_path / "out"
    assert main([*argv, "--model", str(tmp_path / "no-such-model"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"charstudio: error: {flag}=")
    assert f"at most {bound} " in err and "no-such-model" not in err
    assert not out.exists()


# -- cancel in every app -------------------------------------------------------------------------
pytest.importorskip("ipywidgets")


class Counter:
    """Counts UNet calls (one per denoising step, CFG rows included) and text-encoder calls, and
    the counts at the moment Cancel was clicked."""

    def __init__(self, studio):
        self.steps = self.encodes = 0
        self.at_click: tuple[int, int] | None = None
        self.on_step = None  # called at the start of each step (a pre-hook on the UNet)
        self.handles = [studio.components["unet"].register_forward_pre_hook(self._step),
                        studio.components["text_encoder"].register_forward_pre_hook(self._encode)]

    def _step(self, *_):
        self.steps += 1
        if self.on_step is not None:
            self.on_step()

    def _encode(self, *_):
        self.encodes += 1

    def click(self, button):
        if self.at_click is None:
            self.at_click = (self.steps, self.encodes)
            button.click()

    @property
    def after(self) -> tuple[int, int]:
        """(UNet steps, text encodings) that started after the click."""
        assert self.at_click is not None, "Cancel was never clicked"
        return self.steps - self.at_click[0], self.encodes - self.at_click[1]

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.fixture
def counter_for():
    made = []

    def make(studio):
        made.append(Counter(studio))
        return made[-1]

    yield make
    for c in made:
        c.remove()


def finish(app, timeout=300):
    assert app.wait(timeout), "the job is still running after Cancel"


def cancelled(app, button):
    assert "cancelled" in app.status.text and app.status.level == "warn", app.status.text
    assert not app.runner.running and not button.disabled and app.cancel_button.disabled


def test_explore_cancel_inside_a_picture_and_between_pictures_of_a_sheet(tiny_studio, counter_for, tmp_path,
                                                                         monkeypatch):
    from charstudio.ui.explore import ExploreApp

    app = ExploreApp(tiny_studio, steps=4, preview_every=1, output_dir=str(tmp_path / "out"))
    app.width.value = app.height.value = 64
    app.prompt.value, app.seed.value, app.lock_seed.value = "a dragon", 3, True
    real = app._report
    count = counter_for(tiny_studio)

    # 1. Inside a picture: at most one more step.
    def at_step_two(p):
        real(p)
        if p.step == 2:
            count.click(app.cancel_button)

    monkeypatch.setattr(app, "_report", at_step_two)
    app.generate_button.click()
    finish(app)
    cancelled(app, app.generate_button)
    assert count.after[0] <= 1 and len(app.gallery) == 0

    # 2. A sheet between pictures: the anchor pose is drawn; the next poses start no work at all.
    app.select_poses(["standing_front", "walking", "sitting"])
    app.consistency.value = 0.5
    count.at_click = None

    def after_the_anchor(p):
        real(p)
        if p.image == 1 and p.batch == 1 and p.step == p.steps:
            count.click(app.cancel_button)

    monkeypatch.setattr(app, "_report", after_the_anchor)
    tiny_studio.max_batch = 1
    try:
        app.sheet_button.click()
        finish(app)
    finally:
        tiny_studio.max_batch = 8
    cancelled(app, app.sheet_button)
    assert count.after == (0, 0)  # no step, and no prompt encoded for the poses after the click

    # 3. The app (and the shared studio) is free again: a later job runs.
    monkeypatch.setattr(app, "_report", real)
    app.generate_button.click()
    finish(app)
    assert app.status.level == "ok", app.status.text
    assert len(app.gallery) >= 1


def test_interpolate_cancel_inside_a_batch_and_between_frames(tiny_studio, counter_for, tmp_path, monkeypatch):
    from charstudio.ui.common import Gallery
    from charstudio.ui.interpolate import InterpolateApp

    app = InterpolateApp(tiny_studio, gallery=Gallery(), steps=3, frames=4, output_dir=str(tmp_path / "out"))
    app.size.value = 64
    app.design_a.source.value, app.design_b.source.value = "card:aiko", "card:bram"
    count = counter_for(tiny_studio)
    real = app.progress.fraction

    # 1. Between frames: frame 1 is drawn, frame 2 never starts.
    def after_frame_one(done, text):
        real(done, text)
        if text.startswith("render 1/") and text.endswith("step 3/3"):
            count.click(app.cancel_button)

    monkeypatch.setattr(app.progress, "fraction", after_frame_one)
    app.interpolate_button.click()
    finish(app)
    cancelled(app, app.interpolate_button)
    assert count.after[0] == 0 and app.interpolation is None

    # 2. Inside one batch of frames (pose animation): at most one more step.
    count.at_click = None

    def at_step_one(done, text):
        real(done, text)
        if text.endswith("step 1/3"):
            count.click(app.cancel_button)

    monkeypatch.setattr(app.progress, "fraction", at_step_one)
    app.anim_design.source.value = "card:mira"
    app.anim_frames.value = 3
    app.animate_button.click()
    finish(app)
    cancelled(app, app.animate_button)
    assert count.after[0] <= 1 and app.animation is None

    # 3. Free again.
    monkeypatch.setattr(app.progress, "fraction", real)
    app.frames.value = 2
    app.interpolate_button.click()
    finish(app)
    assert app.status.level == "ok", app.status.text
    assert len(app.interpolation.frames) == 2


def test_process_cancel_inside_a_trace_and_between_the_two_of_a_comparison(tiny_studio, counter_for, monkeypatch):
    from charstudio.ui.process import ProcessApp

    app = ProcessApp(tiny_studio, steps=4, prompt="a red knight")
    app.size.value = 64
    count = counter_for(tiny_studio)
    real = app._report

    # 1. Inside a trace.
    def at_step_two(p):
        real(p)
        if p.step == 2:
            count.click(app.cancel_button)

    monkeypatch.setattr(app, "_report", at_step_two)
    app.trace_button.click()
    finish(app)
    cancelled(app, app.trace_button)
    assert count.after[0] <= 1 and app.trace is None

    # 2. Between A and B: A is done, B starts no step.
    count.at_click = None
    app.steps_a.value = app.steps_b.value = 3

    def after_a(p):
        real(p)
        if p.image == 1 and p.step == 3:
            count.click(app.cancel_button)

    monkeypatch.setattr(app, "_report", after_a)
    app.compare_button.click()
    finish(app)
    cancelled(app, app.compare_button)
    assert count.after == (0, 0) and not app.comparison

    # 3. Free again.
    monkeypatch.setattr(app, "_report", real)
    app.trace_button.click()
    finish(app)
    assert app.status.level == "ok" and len(app.trace.records) == 4


def make_dataset(folder, n=3, size=64):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.random.RandomState(i).randint(0, 255, (size, size, 3), dtype=np.uint8)).save(
            folder / f"img{i}.png")
    return folder


def test_train_cancel_stops_the_before_after_pictures(fresh_studio, counter_for, tmp_path, monkeypatch):
    """Training ends, then the before/after sweep draws three pictures: Stop during its first
    picture ends the job within one step (it used to draw all three)."""
    import charstudio.interpolation as interpolation
    from charstudio.ui.common import Gallery
    from charstudio.ui.train import TrainApp

    app = TrainApp(fresh_studio, data_dir=str(make_dataset(tmp_path / "data")), steps=1,
                   output_dir=str(tmp_path / "lora"), gallery=Gallery())
    app.validation_steps.value, app.checkpointing_steps.value = 0, 1
    app.validation_inference_steps.value, app.rank.value, app.resolution.value = 3, 4, 64
    app.name.value = "hero"
    count = counter_for(fresh_studio)
    sweeping = []
    real_sweep = interpolation.lora_sweep

    def sweep(*args, **kwargs):
        sweeping.append(True)
        return real_sweep(*args, **kwargs)

    monkeypatch.setattr(interpolation, "lora_sweep", sweep)
    count.on_step = lambda: count.click(app.stop_button) if sweeping else None
    app.start_button.click()
    finish(app)
    assert sweeping and count.after[0] <= 1, count.after
    assert "cancelled" in app.status.text and not app.runner.running and not app.start_button.disabled
    assert (tmp_path / "lora" / "hero" / "pytorch_lora_weights.safetensors").is_file()  # training itself finished

    # Free again: a later job runs to the end.
    count.on_step = None
    app.overwrite.value = True
    app.start_button.click()
    finish(app)
    assert app.status.level == "ok", app.status.text
    assert [r.loras.get("hero") for r in app.comparison.recipes] == [0.0, 0.5, 1.0]


def test_train_stop_during_validation_pictures_ends_within_one_step(fresh_studio, counter_for, tmp_path):
    """Stop while training draws its validation pictures (UNet calls without gradients) ends them
    within one denoising step; the step's checkpoint stays for Resume and the app is free again."""
    import torch

    from charstudio.ui.common import Gallery
    from charstudio.ui.train import TrainApp

    app = TrainApp(fresh_studio, data_dir=str(make_dataset(tmp_path / "data")), steps=2,
                   output_dir=str(tmp_path / "lora"), gallery=Gallery())
    app.validation_steps.value, app.checkpointing_steps.value = 1, 1
    app.validation_inference_steps.value, app.rank.value, app.resolution.value = 6, 4, 64
    app.name.value = "hero"
    count = counter_for(fresh_studio)
    count.on_step = lambda: None if torch.is_grad_enabled() else count.click(app.stop_button)
    app.start_button.click()
    finish(app)
    assert count.at_click is not None, "no validation picture was drawn"
    assert count.after[0] <= 1, count.after  # was: the rest of the validation pictures' steps
    assert not app.runner.running and not app.start_button.disabled
    assert app.stopped_at == 1 and (tmp_path / "lora" / "hero" / "checkpoints" / "checkpoint-000001").is_dir()


def test_workflows_cancel_inside_a_picture_between_sheet_pictures_and_a_huge_list(mini_studio, counter_for,
                                                                                   monkeypatch):
    from charstudio.ui import WorkflowsApp

    app = WorkflowsApp(mini_studio, steps=4)
    app.design.source.value = "card:rin"
    app.seed.value = 3
    count = counter_for(mini_studio)
    real = app.progress.report

    # 1. Inside a picture (two characters: the first of two pictures).
    def at_step_two(p):
        real(p)
        if p.step == 2:
            count.click(app.cancel_button)

    monkeypatch.setattr(app.progress, "report", at_step_two)
    app.workflow.value = "regions"
    app.run_button.click()
    finish(app)
    cancelled(app, app.run_button)
    assert count.after[0] <= 1

    # 2. An expression sheet between pictures: the first expression is drawn (the reference);
    #    the others start no work at all.
    count.at_click = None

    def after_the_first(p):
        real(p)
        if p.image == 1 and p.batch == 1 and p.step == p.steps:
            count.click(app.cancel_button)

    monkeypatch.setattr(app.progress, "report", after_the_first)
    app.workflow.value = "expressions"
    app.expressions.value = "neutral, smiling, angry, surprised, sad, embarrassed"
    mini_studio.max_batch = 2
    try:
        app.run_button.click()
        finish(app)
    finally:
        mini_studio.max_batch = 8
    cancelled(app, app.run_button)
    assert count.after == (0, 0)

    # 3. The 10,000 expressions: refused at once in one line naming the bound; nothing drawn.
    monkeypatch.setattr(app.progress, "report", real)
    before = (count.steps, count.encodes)
    app.expressions.value = ",".join(f"e{i}" for i in range(10_000))
    app.run_button.click()
    finish(app, 60)
    assert app.status.level == "error" and "\n" not in app.status.text
    assert "10000 expressions" in app.status.text and f"at most {MAX_ITEMS}" in app.status.text
    assert (count.steps, count.encodes) == before

    # 4. Free again: a later job runs to the end.
    app.expressions.value = "neutral, smiling"
    app.run_button.click()
    finish(app)
    assert "done" in app.status.text, app.status.text
    assert app.result.labels == ["neutral", "smiling"] and np.asarray(app.result.images[1]).std() > 0
