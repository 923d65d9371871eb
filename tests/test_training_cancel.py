"""Stop during training (#34 finding): the pictures drawn inside a training run, validation
samples and prior-preservation class images, honour the run's cancel token within one denoising
step. Steps are counted (UNet calls), never seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from charstudio.callbacks import CancelToken
from charstudio.errors import GenerationCancelled
from charstudio.training import LoraTrainingConfig, list_checkpoints, train_lora

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLING_STEPS = 6


def _images(folder: Path, n: int = 3) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.random.RandomState(i).randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            folder / f"img{i}.png")
    return folder


def _config(tmp_path: Path, **overrides) -> LoraTrainingConfig:
    settings = dict(model="tiny", data_dir=str(_images(tmp_path / "data")), name="hero",
                    output_dir=str(tmp_path / "lora"), max_train_steps=3, rank=4, batch_size=1, resolution=64,
                    validation_steps=1, num_validation_images=2, validation_inference_steps=SAMPLING_STEPS,
                    checkpointing_steps=1)
    settings.update(overrides)
    return LoraTrainingConfig(**settings)


class SamplingCounter:
    """Counts the UNet calls of pictures (those made without gradients; training's own forward
    passes have them on), and clicks Stop at the first one."""

    def __init__(self, unet, token: CancelToken):
        self.token, self.calls, self.at_click = token, 0, None
        self.handle = unet.register_forward_pre_hook(self._call)

    def _call(self, *_):
        import torch

        if torch.is_grad_enabled():
            return
        self.calls += 1
        if self.at_click is None:
            self.at_click = self.calls
            self.token.cancel()

    @property
    def after(self) -> int:
        """Picture UNet calls that started after the click."""
        assert self.at_click is not None, "Stop was never clicked"
        return self.calls - self.at_click


@pytest.fixture
def tiny_components():
    from charstudio.models.tiny import build_tiny_components

    return build_tiny_components()


def test_stop_during_validation_pictures_ends_them_within_one_step(tmp_path, tiny_components):
    token = CancelToken()
    count = SamplingCounter(tiny_components["unet"], token)
    records = []
    steps = train_lora(_config(tmp_path), components=tiny_components, cancel=token)
    try:
        for record in steps:  # as the Train app's loop: stop at the first record after Stop
            records.append(record)
            if token.cancelled and not record.done:
                break
    finally:
        steps.close()
        count.handle.remove()
    # Stop came in step 1's first validation picture (2 pictures x 6 steps): no other step ran.
    assert count.after <= 1, count.after
    assert [r.step for r in records] == [1] and records[0].images == []
    # The step still ends as usual: its checkpoint is there for Resume, no half picture is saved.
    lora_dir = tmp_path / "lora" / "hero"
    assert [c.name for c in list_checkpoints(lora_dir)] == ["checkpoint-000001"]
    assert not list((lora_dir / "validation").glob("*.png"))

    # Resume with a token nobody sets: every picture of steps 2 and 3 is drawn, all 6 steps of each.
    count = SamplingCounter(tiny_components["unet"], CancelToken())  # clicks a token the run does not hold
    try:
        resumed = list(train_lora(_config(tmp_path, resume=True), components=tiny_components, cancel=CancelToken()))
    finally:
        count.handle.remove()
    assert [r.step for r in resumed] == [2, 3] and [len(r.images) for r in resumed] == [2, 2] and resumed[-1].done
    # 2 validation points of 2 pictures, and once the same 2 at LoRA weight 0 (identity's base, #36).
    assert count.calls == (2 * 2 + 2) * SAMPLING_STEPS


def test_stop_while_class_images_are_made_ends_the_run_within_one_step(tmp_path, tiny_components):
    token = CancelToken()
    count = SamplingCounter(tiny_components["unet"], token)
    config = _config(tmp_path, with_prior_preservation=True, num_class_images=3, num_validation_images=0)
    try:
        with pytest.raises(GenerationCancelled):
            list(train_lora(config, components=tiny_components, cancel=token))
    finally:
        count.handle.remove()
    assert count.after <= 1, count.after  # it used to draw all 3 class images (18 steps) first
    # Nothing trained: no checkpoint, and the fresh run's folder is gone (no class image was finished).
    assert not (tmp_path / "lora" / "hero" / "checkpoints").exists()
    assert not list((tmp_path / "lora").rglob("class_*.png"))
