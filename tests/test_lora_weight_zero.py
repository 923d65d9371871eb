"""A LoRA at weight 0 is the base model (issue #35, a #34 finding): peft's DoRA layers apply their
magnitudes whatever the scale, so a DoRA file "at weight 0" still changed tiny's UNet output (by up
to 0.44). A LoRA sweep's 0 must draw the base model's picture exactly, while the studio's record
and the recipe still say 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


def _dora_file(studio, path, *, rank=4, seed=0):
    """A kohya/LyCORIS DoRA file for every attention projection of tiny's UNet: lora_down/lora_up/
    alpha and an output-axis dora_scale well away from the adapted weight's row norms."""
    from safetensors.torch import save_file

    from charstudio import lora

    gen = torch.Generator().manual_seed(seed)
    unet = studio.components["unet"]
    tensors = {}
    for name, module in unet.named_modules():
        if not (".attentions." in name and name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))):
            continue
        w0 = module.weight.detach()
        out_dim, in_dim = w0.shape
        base = next(iter(lora.peft_to_kohya({"unet": {f"{name}.lora_A.weight": torch.zeros(1, 1)}},
                                            {f"unet.{name}": 1.0}))).removesuffix(".lora_down.weight")
        down = torch.randn(rank, in_dim, generator=gen) / in_dim ** 0.5
        up = torch.randn(out_dim, rank, generator=gen) * float(w0.std())
        merged = w0 + (up @ down)
        tensors[f"{base}.lora_down.weight"] = down
        tensors[f"{base}.lora_up.weight"] = up
        tensors[f"{base}.alpha"] = torch.tensor(float(rank))
        tensors[f"{base}.dora_scale"] = merged.norm(dim=1, keepdim=True) * (0.2 + 2 * torch.rand(out_dim, 1, generator=gen))
    save_file(tensors, str(path))
    return path


def _picture(studio):
    # (the watermark off: it hashes the recipe, and these compare recipes that differ in their LoRAs)
    result = studio.generate("a girl with red hair", seed=5, num_inference_steps=4, width=64, height=64,
                             watermark=False)
    return result, np.asarray(result.image, dtype=np.int16)


def test_a_dora_at_weight_zero_draws_the_base_models_picture_exactly(tmp_path):
    from charstudio import Studio

    studio = Studio.from_pretrained("tiny", device="cpu")
    _, base = _picture(studio)
    name = studio.load_lora(_dora_file(studio, tmp_path / "dora.safetensors"), weight=0.0)

    result, at_zero = _picture(studio)
    np.testing.assert_array_equal(at_zero, base)
    assert studio.active_loras == {name: 0.0}  # the record keeps the 0 ...
    assert result.recipe.loras == {name: 0.0}  # ... and so does the recipe

    studio.set_loras({name: 1.0})
    _, at_one = _picture(studio)
    # the file does change the picture at full weight (measured: 8 to 10 levels on average, files of seeds 0-2)
    assert np.abs(at_one - base).mean() > 3

    studio.set_loras({name: 0.0})  # and back to 0 after a run at 1
    _, again = _picture(studio)
    np.testing.assert_array_equal(again, base)


def test_a_zero_weight_adapter_mixed_with_others_is_left_out_of_the_model(tmp_path):
    """With two adapters, the one at 0 adds nothing: the picture is the other one's alone."""
    from charstudio import Studio

    studio = Studio.from_pretrained("tiny", device="cpu")
    a = studio.load_lora(_dora_file(studio, tmp_path / "a.safetensors", seed=1), weight=1.0, adapter_name="a")
    b = studio.load_lora(_dora_file(studio, tmp_path / "b.safetensors", seed=2), weight=0.0, adapter_name="b")
    _, both = _picture(studio)
    studio.set_loras({a: 1.0})
    _, alone = _picture(studio)
    np.testing.assert_array_equal(both, alone)
    assert studio.active_loras == {a: 1.0}
    studio.set_loras({a: 1.0, b: 0.0})
    assert studio.active_loras == {a: 1.0, b: 0.0}
