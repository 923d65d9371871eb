"""One test per entry of charstudio.compat: the private diffusers/peft/transformers internals.

When a new diffusers, peft or transformers release fails here, fix charstudio/compat.py and
raise the cap in pyproject.toml.
"""

from __future__ import annotations

import numpy as np

from charstudio import compat


def _text_encoder_with(*names: str):
    from peft import LoraConfig

    from charstudio.models.tiny import build_tiny_components

    te = build_tiny_components(0)["text_encoder"]
    for name in names:
        te.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
                       adapter_name=name)
    return te


def _encode(te) -> np.ndarray:
    import torch

    with torch.no_grad():
        return te(torch.arange(2, 12)[None])[0].numpy()


def test_remove_text_encoder_adapter_keeps_the_others_and_the_last_leaves_a_plain_model():
    from peft import LoraConfig

    from charstudio.models.tiny import build_tiny_components

    plain = _encode(build_tiny_components(0)["text_encoder"])
    te = _text_encoder_with("a", "b")
    compat.remove_text_encoder_adapter(te, "a")
    assert set(te.peft_config) == {"b"}
    compat.remove_text_encoder_adapter(te, "b")
    assert getattr(te, "peft_config", None) is None and not getattr(te, "_hf_peft_config_loaded", False)
    np.testing.assert_allclose(_encode(te), plain, atol=1e-6)
    compat.remove_text_encoder_adapter(te, "b")  # already gone: nothing to do
    # The encoder takes a new adapter of the same name afterwards.
    te.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"]), adapter_name="b")
    assert set(te.peft_config) == {"b"}


def test_remove_all_text_encoder_adapters_restores_the_plain_layers():
    import torch

    from charstudio.models.tiny import build_tiny_components

    plain = _encode(build_tiny_components(0)["text_encoder"])
    te = _text_encoder_with("a", "b")
    assert not np.allclose(_encode(te), plain, atol=1e-6)
    compat.remove_all_text_encoder_adapters(te)
    assert getattr(te, "peft_config", None) is None
    assert not any(isinstance(m, torch.nn.Module) and "lora" in type(m).__module__ for m in te.modules())
    np.testing.assert_allclose(_encode(te), plain, atol=1e-6)


def test_forget_step_index_lets_scale_model_input_follow_the_timestep():
    import torch

    from charstudio.models.tiny import build_tiny_components
    from charstudio.schedulers import make_scheduler

    scheduler = make_scheduler("euler", build_tiny_components(0)["scheduler"].config)
    scheduler.set_timesteps(5)
    x = torch.ones(1, 4, 2, 2)
    expected = (1 / (scheduler.sigmas[:5] ** 2 + 1) ** 0.5).tolist()

    def scales(forget: bool) -> list[float]:
        scheduler.set_timesteps(5)
        out = []
        for t in scheduler.timesteps:
            if forget:
                compat.forget_step_index(scheduler)
            out.append(float(scheduler.scale_model_input(x, t).flatten()[0]))
        return out

    np.testing.assert_allclose(scales(True), expected, rtol=1e-5)
    # Without it Euler keeps the first step's scaling: what the entry exists for.
    assert len(set(scales(False))) == 1


def test_no_other_module_touches_these_internals():
    import re
    from pathlib import Path

    package = Path(compat.__file__).parent
    internals = ("_step_index", "_hf_peft_config_loaded", "delete_adapter_layers", "_remove_text_encoder_monkey_patch",
                 "recurse_remove_peft_layers")
    users = {f"{p.relative_to(package)}: {name}" for p in package.rglob("*.py") if p.name != "compat.py"
             for name in internals if re.search(rf"(?<![A-Za-z0-9_]){name}\b", p.read_text(encoding="utf-8"))}
    assert not users, f"use charstudio.compat instead: {sorted(users)}"
