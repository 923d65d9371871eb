"""TrainApp without a browser: dataset + captions, Start, live loss/validation, Stop, Resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from charstudio.ui.common import Gallery, blank_png  # noqa: E402
from charstudio.ui.train import TrainApp  # noqa: E402


def make_dataset(folder, n=3, size=128):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = np.random.RandomState(i).randint(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def app(fresh_studio, tmp_path, monkeypatch):
    import charstudio.training as training

    configs = []
    real = training.train_lora

    def spy(config, **kwargs):
        configs.append(config)
        return real(config, **kwargs)

    monkeypatch.setattr(training, "train_lora", spy)
    a = TrainApp(fresh_studio, data_dir=str(make_dataset(tmp_path / "data")), steps=4,
                 output_dir=str(tmp_path / "lora"), gallery=Gallery())
    a.configs = configs
    a.validation_steps.value = 0  # validate at the end only
    a.checkpointing_steps.value = 1
    a.validation_inference_steps.value = 2
    a.rank.value = 4
    a.resolution.value = 64  # small pictures keep the test fast
    yield a
    a.wait()


def run(app, button):
    button.click()
    assert app.wait(300), "the run did not finish"


def test_dataset_shows_images_and_saves_edited_captions(app, tmp_path):
    (tmp_path / "data" / "img1.txt").write_text("sks person, red coat\n")
    assert app.load_dataset() == 3
    boxes = list(app.dataset.captions.values())
    assert [b.value for b in boxes] == ["", "sks person, red coat", ""]
    assert len(app.dataset.grid.children) == 3
    boxes[0].value = "sks person   smiling"
    boxes[1].value = ""
    app.save_captions_button.click()
    assert (tmp_path / "data" / "img0.txt").read_text().strip() == "sks person smiling"
    assert not (tmp_path / "data" / "img1.txt").exists()  # emptied caption: the instance prompt applies
    assert "2 caption" in app.status.text
    app.load_dataset()
    assert not app.pose_conditioning.value and "no pose files" in app.status.text

    # Load ticks pose conditioning when every image has its pose, and the config carries it.
    from charstudio.pose import load_pose
    from charstudio.pose import pose_file

    for image in app.dataset.images:
        load_pose("standing_front").fit(128, 128).save(pose_file(image))
    assert app.load_dataset() == 3
    assert app.pose_conditioning.value and "pose conditioning on" in app.status.text
    assert app.make_config().pose_conditioning
    pose_file(app.dataset.images[0]).unlink()
    app.load_dataset()
    assert not app.pose_conditioning.value and "2 with a pose file" in app.status.text

    app.data_dir.value = str(tmp_path / "nowhere")
    assert app.load_dataset() == 0
    assert app.status.level == "error" and "nowhere" in app.status.text and "\n" not in app.status.text


def test_train_stop_resume_then_loss_validation_lora_and_before_after(app, tmp_path, monkeypatch):
    (tmp_path / "data" / "img1.txt").write_text("zxq, a hero in a green cloak\n")
    app.name.value = "hero"
    app.trigger.value = "zxq"
    app.learning_rate.value = 1e-3
    app.batch_size.value, app.snr_gamma.value, app.lr_scheduler.value = 2, 5.0, "cosine"
    app.lora_layers.value = "transformer"
    app.checkpointing_steps.value = 2
    real = app._on_step

    def on_step(record):
        real(record)
        if record.step == 2:
            app.stop_button.click()

    # 1. Start, and Stop after step 2: the checkpoint of step 2 stays, no LoRA yet.
    monkeypatch.setattr(app, "_on_step", on_step)
    run(app, app.start_button)
    cfg = app.configs[-1]
    assert (cfg.name, cfg.trigger_word, cfg.max_train_steps, cfg.rank, cfg.resume) == ("hero", "zxq", 4, 4, False)
    assert cfg.learning_rate == pytest.approx(1e-3) and cfg.output_dir == str(tmp_path / "lora")
    assert (cfg.batch_size, cfg.snr_gamma, cfg.lr_scheduler, cfg.lora_layers) == (2, 5.0, "cosine", "transformer")
    assert app.stopped_at == 2 and app.status.level == "warn", app.status.text
    assert "checkpoint-000002" in app.status.text and "Resume" in app.status.text
    assert [s for s, _ in app.history] == [1, 2] and "step 2/4" in app.progress.label.value
    assert not (tmp_path / "lora" / "hero" / "pytorch_lora_weights.safetensors").exists()
    assert not app.start_button.disabled and app.stop_button.disabled

    # 2. Resume: it picks up after the checkpoint and finishes.
    monkeypatch.setattr(app, "_on_step", real)
    run(app, app.resume_button)
    assert app.status.level == "ok", app.status.text
    assert app.configs[-1].resume is True
    assert [s for s, _ in app.history] == [3, 4]
    assert app.progress.bar.value == 1.0 and "step 4/4" in app.progress.label.value
    assert app.loss_plot.value != blank_png()
    assert len(app.validation.children) == cfg.num_validation_images
    assert (tmp_path / "lora" / "hero" / "pytorch_lora_weights.safetensors").is_file()
    assert "hero" in app.status.text

    # 3. Before/after: the validation prompt at LoRA weights 0, 0.5 and 1, one seed.
    if hasattr(app.studio, "load_lora"):
        weights = [r.loras.get("hero") for r in app.comparison.recipes]
        assert weights == [0.0, 0.5, 1.0] and len(app.comparison_images.children) == 3
        assert len({r.seed for r in app.comparison.recipes}) == 1
        # ... in the data's own words: the caption file, which validation used too.
        assert {r.prompt for r in app.comparison.recipes} == {"zxq, a hero in a green cloak"}
        recorded = json.loads((tmp_path / "lora" / "hero" / "training_config.json").read_text())
        assert recorded["resolved"]["validation_prompt"] == "zxq, a hero in a green cloak"
    else:
        assert app.comparison is None and "load_lora" in app.comparison_info.value

    # 4. Starting again under the same name without "replace" is refused with a readable line.
    run(app, app.start_button)
    assert app.status.level == "error" and "overwrite" in app.status.text and "\n" not in app.status.text
    app.snr_gamma.value = 0.0  # 0 in the min-SNR box means off
    assert app.make_config().snr_gamma is None


def test_apply_settings_sets_the_controls_or_names_what_they_cannot_hold(app):
    from charstudio.errors import ConfigError
    from charstudio.mini.evaluate import LORA_SETTINGS

    app.apply_settings(LORA_SETTINGS)  # what notebook 02 does for mini's LoRA check
    cfg = app.make_config()
    for field in set(app.SETTING_CONTROLS) | {"alpha"}:
        if field in LORA_SETTINGS:
            assert getattr(cfg, field) == LORA_SETTINGS[field], field
    # Every setting that changes what is learnt has a control (the rest: alpha = rank, and the
    # check's own bookkeeping), so the notebook trains what the check trains.
    assert set(LORA_SETTINGS) - set(app.SETTING_CONTROLS) <= {"alpha", "resolution", "validation_steps",
                                                               "num_validation_images", "checkpointing_steps"}
    app.apply_settings({"with_prior_preservation": True, "class_prompt": "a boy", "num_class_images": 8})
    cfg = app.make_config()
    assert (cfg.with_prior_preservation, cfg.class_prompt, cfg.num_class_images) == (True, "a boy", 8)
    app.apply_settings({"class_prompt": None})
    assert app.class_prompt.value == "" and app.make_config().class_prompt is None
    app.apply_settings(LORA_SETTINGS)
    with pytest.raises(ConfigError, match="learning_rate=0.5.*between 1e-06 and 0.1"):
        app.apply_settings({"learning_rate": 0.5})  # a slider would clamp it silently
    with pytest.raises(ConfigError, match="rank=12.*one of"):
        app.apply_settings({"rank": 12})
    with pytest.raises(ConfigError, match="alpha=4"):
        app.apply_settings({"rank": 8, "alpha": 4})
    assert app.make_config().learning_rate == LORA_SETTINGS["learning_rate"]  # refused values changed nothing


def test_gallery_picks_become_a_dataset(app, tmp_path, tiny_studio):
    from PIL import Image

    assert app.use_gallery_picks(str(tmp_path / "picks")) == 0 and app.status.level == "warn"
    recipe = tiny_studio.make_config("a knight", seed=1, num_inference_steps=2)
    for i in range(3):
        item = app.gallery.add(Image.new("RGB", (128, 128), (i * 40, 0, 0)), recipe.replace(seed=i), f"k{i}")
        item.pick.value = i != 1
    assert app.use_gallery_picks(str(tmp_path / "picks")) == 2
    assert app.data_dir.value == str(tmp_path / "picks") and len(app.dataset.images) == 2
