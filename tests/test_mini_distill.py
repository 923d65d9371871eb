"""The 4-step mini's distillation command (charstudio.mini.distill, issue 38 item 3): the consistency
boundary condition, a short run that resumes where it stopped, and an export the studio loads. What
the shipped LoRA does at 4 steps is tests/test_draft_mini.py's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from charstudio.errors import OutputError
from charstudio.mini.distill import DistillRecipe, boundary_scalings, distill, main
from helpers import pixels


def test_the_consistency_function_is_the_identity_at_the_first_timestep_and_the_prediction_at_the_last():
    # f(x, t) = c_skip(t) x + c_out(t) x0(x, t): LCM's boundary condition is f(x, 0) = x.
    c_skip, c_out = boundary_scalings(torch.tensor([0.0, 19.0, 999.0]))
    assert c_skip[0] == 1 and c_out[0] == 0
    assert c_skip[2] < 1e-6 and c_out[2] > 0.9999
    assert 0 < c_skip[1] < 1e-3  # with timestep_scaling 10, already the prediction at the first grid step


def test_a_short_distillation_resumes_exports_a_lora_the_studio_loads_and_never_overwrites(tmp_path, mini_studio):
    small = dict(samples=32, batch=4, lr=0.01, warmup=1, checkpoint_every=1, export_every=100, threads=1)
    work, out = tmp_path / "work", tmp_path / "lcm"
    distill(DistillRecipe(steps=2, **small), work, work / "first")
    first = (work / "lora.safetensors").read_bytes()
    # The same command with more steps resumes at step 2 (it does not start again).
    distill(DistillRecipe(steps=3, **small), work, out)
    state = json.loads((work / "state.json").read_text())
    assert state["step"] == 3 and json.loads((out / "distill_config.json").read_text())["step"] == 3
    assert (work / "lora.safetensors").read_bytes() != first
    assert {p.name for p in out.iterdir()} >= {"pytorch_lora_weights.safetensors", "mini_lcm.safetensors"}

    # The export is a LoRA like any other: it loads and moves the picture, and unloads.
    settings = dict(seed=3, num_inference_steps=4, watermark=False)
    plain = pixels(mini_studio.generate("a girl", **settings).image)
    name = mini_studio.load_lora(out / "pytorch_lora_weights.safetensors", adapter_name="lcm_test")
    try:
        drawn = pixels(mini_studio.generate("a girl", **settings).image)
    finally:
        mini_studio.unload_lora(name)
    assert np.abs(drawn.astype(int) - plain).mean() > 0.5

    with pytest.raises(OutputError, match="already holds a LoRA"):
        distill(DistillRecipe(steps=3, **small), work, out)
    with pytest.raises(SystemExit) as stop:
        main(["--work", str(work), "--out", str(out), "--steps", "3", "--samples", "32", "--batch", "4"])
    assert stop.value.code == 2
