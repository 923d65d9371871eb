"""DoRA LoRAs (weight-decomposed LoRA, issue #34): kohya/LyCORIS files (``dora_scale``) and peft files
(``lora_magnitude_vector``) load with the file's magnitudes on every part of the model, SD 1.x and
SDXL, as LyCORIS computes them; damaged files are refused in one line naming the tensor.

The oracle is the DoRA formula (LyCORIS ``apply_weight_decompose`` with ``wd_on_out=True``, peft's
DoRA layers) applied to the file's own tensors:
``W' = dora_scale * (W0 + alpha/r * up @ down) / ||W0 + alpha/r * up @ down||_row``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from charstudio import lora
from charstudio.errors import CharstudioError, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

UNET_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out")  # proj_in/out: convolutions in SD 1.x
TEXT_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _studio(preset):
    from charstudio import Studio

    return Studio.from_pretrained(preset, device="cpu")


def _family(studio):
    from charstudio.models.family import FAMILIES

    return FAMILIES[studio.family.name]


def _targets(studio, unet_modules=UNET_MODULES, text_modules=TEXT_MODULES):
    """(component, module name, module) of every layer the test LoRA adapts."""
    out = []
    for comp, suffixes in (("unet", unet_modules), ("text_encoder", text_modules), ("text_encoder_2", text_modules)):
        model = studio.components.get(comp)
        if model is None or not suffixes:
            continue
        for name, module in model.named_modules():
            if name.endswith(tuple("." + s for s in suffixes)) and (comp != "unet" or ".attentions." in name):
                out.append((comp, name, module))
    return out


def _kohya_name(studio, comp, module):
    """The kohya base name charstudio writes for a module (its writer follows ComfyUI's and A1111's
    key maps: tests/test_sdxl_lora.py, tests/test_lora.py)."""
    keys = lora.peft_to_kohya({comp: {f"{module}.lora_A.weight": torch.zeros(1, 1)}}, {f"{comp}.{module}": 1.0},
                              family=_family(studio), layers_per_block=studio.components["unet"].config.layers_per_block)
    return next(iter(keys)).removesuffix(".lora_down.weight")


def _kohya_file(studio, path, targets, *, dora=True, rank=4, seed=0):
    """A LyCORIS-style kohya file for ``targets``: lora_down/lora_up/alpha, and with ``dora`` an
    output-axis dora_scale of shape (out, 1, ...) away from the adapted weight's row norms.
    Returns the tensors and kohya base name -> (component, module name)."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors, where = {}, {}
    for comp, name, module in targets:
        w0 = module.weight.detach()
        kernel = [1] * (w0.ndim - 2)
        out_dim, in_dim = w0.shape[:2]
        down = torch.randn(rank, in_dim, *kernel, generator=gen) / in_dim ** 0.5
        up = torch.randn(out_dim, rank, *kernel, generator=gen) * float(w0.std())
        alpha = float(torch.rand((), generator=gen)) * rank + 0.5
        base = _kohya_name(studio, comp, name)
        tensors[f"{base}.lora_down.weight"] = down
        tensors[f"{base}.lora_up.weight"] = up
        tensors[f"{base}.alpha"] = torch.tensor(alpha)
        if dora:
            merged = w0 + alpha / rank * (up.flatten(1) @ down.flatten(1)).reshape(w0.shape)
            norm = merged.flatten(1).norm(dim=1).reshape(out_dim, 1, *kernel)
            tensors[f"{base}.dora_scale"] = norm * (0.5 + torch.rand(out_dim, 1, *kernel, generator=gen))
        where[base] = (comp, name)
    save_file(tensors, str(path))
    return tensors, where


def _oracle(w0, tensors, base):
    """The adapted weight LyCORIS computes from the file's tensors (plain LoRA when no dora_scale)."""
    down, up = tensors[f"{base}.lora_down.weight"], tensors[f"{base}.lora_up.weight"]
    scale = float(tensors[f"{base}.alpha"]) / down.shape[0]
    merged = w0 + scale * (up.flatten(1) @ down.flatten(1)).reshape(w0.shape)
    if f"{base}.dora_scale" not in tensors:
        return merged
    norm = merged.flatten(1).norm(dim=1).reshape(-1, *[1] * (w0.ndim - 1))
    return tensors[f"{base}.dora_scale"] * merged / norm


def _effective_weight(layer, w0):
    """The weight a (possibly adapted) linear or 1x1 convolution layer applies: its answer to the
    unit vectors, less its bias."""
    n = w0.shape[1]
    with torch.no_grad():
        y = layer(torch.eye(n).reshape(n, n, *[1] * (w0.ndim - 2)))
    bias = getattr(getattr(layer, "base_layer", layer), "bias", None)
    y = y.reshape(n, -1) - (bias if bias is not None else 0)
    return y.T.reshape(w0.shape)


def _outputs(studio, models):
    """Each text encoder's hidden states for a prompt, and the UNet's noise prediction."""
    gen = torch.Generator().manual_seed(7)
    out = {}
    with torch.no_grad():
        hidden = []
        for comp, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            if comp in models:
                tokenizer = studio.components[tok]
                ids = tokenizer("a girl with long red hair", padding="max_length", truncation=True,
                                max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
                out[comp] = models[comp](ids, output_hidden_states=True).hidden_states[-2]
                hidden.append(out[comp])
        unet = models["unet"]
        cfg = unet.config
        latents = torch.randn(1, cfg.in_channels, 8, 8, generator=gen)
        context = torch.randn(1, 77, cfg.cross_attention_dim, generator=gen)
        extra = {}
        if cfg.addition_embed_type == "text_time":
            pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, pooled, generator=gen),
                                           "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}}
        out["unet"] = unet(latents, 10, encoder_hidden_states=context, **extra).sample
    return out


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
@pytest.mark.parametrize("preset", ["tiny", "tiny-sdxl"])
def test_a_dora_file_loads_its_magnitudes_into_every_text_encoder_and_the_unet(preset, fmt, tmp_path):
    """Issue #34 (6): every adapted layer (UNet attention and projection convolutions, SD 1.x's text
    encoder, SDXL's te1 and te2) applies the DoRA formula to the file's tensors, and each part's output
    is the one of the same model with those weights written in; the same after converting the file
    to peft's format, and converting back gives the file's own tensors. Before the fix the text
    encoders kept peft's starting magnitudes (the base weight's row norms)."""
    s = _studio(preset)
    base = {c: copy.deepcopy(m) for c in lora.formats.COMPONENTS if (m := s.components.get(c)) is not None}
    targets = _targets(s)
    assert {c for c, _, _ in targets} == set(base)
    tensors, where = _kohya_file(s, tmp_path / "dora.safetensors", targets)
    path = tmp_path / "dora.safetensors"
    if fmt == "diffusers":
        path = lora.convert_lora(path, tmp_path / "peft.safetensors", to="diffusers")
        back, _ = lora.read_lora_file(lora.convert_lora(path, tmp_path / "back.safetensors", to="kohya"))
        assert set(back) == set(tensors)
        for key, tensor in tensors.items():  # LyCORIS's shapes too: dora_scale (out, 1) or (out, 1, 1, 1)
            torch.testing.assert_close(back[key], tensor, rtol=1e-6, atol=0, msg=lambda m, k=key: f"{k}: {m}")
    s.load_lora(path)

    reference = copy.deepcopy(base)
    for kohya, (comp, name) in sorted(where.items(), key=lambda item: item[1][0] == "unet"):  # text encoders first
        loaded = dict(s.components[comp].named_modules())[name]
        w0 = dict(base[comp].named_modules())[name].weight.detach()
        want = _oracle(w0, tensors, kohya)
        torch.testing.assert_close(_effective_weight(loaded, w0), want, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, k=kohya: f"{k}: {m}")
        dict(reference[comp].named_modules())[name].weight.data.copy_(want)

    got = _outputs(s, {c: s.components[c] for c in base})
    expected = _outputs(s, reference)
    plain = _outputs(s, base)
    for comp in base:
        torch.testing.assert_close(got[comp], expected[comp], rtol=1e-4, atol=1e-4)
        assert (expected[comp] - plain[comp]).abs().max() > 1e-2  # the DoRA visibly moves this part


@pytest.mark.parametrize("bad", ["dora_scale", "alpha", "lora_up.weight", "lora_magnitude_vector"])
def test_a_nan_anywhere_in_a_lora_file_is_refused_naming_the_tensor(bad, tmp_path):
    """Issue #34 (4): a NaN in any tensor (a DoRA scale too, which used to load and draw black)
    is refused in one line naming the tensor, and nothing is loaded."""
    from safetensors.torch import save_file

    s = _studio("tiny")
    targets = _targets(s, unet_modules=("to_q",), text_modules=("q_proj", "k_proj", "v_proj", "out_proj"))
    tensors, _ = _kohya_file(s, tmp_path / "dora.safetensors", targets)
    path = tmp_path / "nan.safetensors"
    if bad == "lora_magnitude_vector":
        lora.convert_lora(tmp_path / "dora.safetensors", tmp_path / "peft.safetensors", to="diffusers")
        tensors, meta = lora.read_lora_file(tmp_path / "peft.safetensors")
    else:
        meta = None
    key = sorted(k for k in tensors if k.endswith(bad) and k.startswith(("lora_te_", "text_encoder.")))[0]
    tensors = {**tensors, key: tensors[key].clone()}
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ConfigError) as err:
        s.load_lora(path)
    assert key in str(err.value) and "NaN" in str(err.value)
    assert "\n" not in str(err.value)
    assert lora.loaded_adapters(s.pipeline("txt2img")) == []


@pytest.mark.parametrize("comp", ["unet", "text_encoder"])
def test_a_magnitude_of_the_wrong_shape_is_refused_naming_the_tensor_and_both_shapes(comp, tmp_path):
    """Issue #34 (5): a peft DoRA file whose lora_magnitude_vector does not fit its layer gets one
    line naming the tensor, its shape and the layer's (it stopped at "Error(s) in loading
    state_dict for UNet2DConditionModel:")."""
    from safetensors.torch import save_file

    s = _studio("tiny")
    targets = _targets(s, unet_modules=("to_q",), text_modules=("q_proj", "k_proj", "v_proj", "out_proj"))
    _kohya_file(s, tmp_path / "dora.safetensors", targets)
    lora.convert_lora(tmp_path / "dora.safetensors", tmp_path / "peft.safetensors", to="diffusers")
    tensors, meta = lora.read_lora_file(tmp_path / "peft.safetensors")
    key = sorted(k for k in tensors if k.startswith(comp + ".") and k.endswith(".lora_magnitude_vector"))[0]
    right = tuple(tensors[key].shape)
    tensors[key] = torch.ones(right[0] + 3)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CharstudioError) as err:
        s.load_lora(tmp_path / "bad.safetensors")
    msg = str(err.value)
    assert key.removeprefix(comp + ".").removeprefix("text_model.") in msg
    assert str((right[0] + 3,)) in msg and str(right) in msg
    assert "\n" not in msg
    assert lora.loaded_adapters(s.pipeline("txt2img")) == []


@pytest.mark.parametrize("modules", [("q_proj", "k_proj", "v_proj"), ("fc1", "fc2"), ("q_proj", "fc1")])
@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_a_text_encoder_lora_without_out_proj_loads(modules, fmt, tmp_path):
    """Issue #34 (6): a text-encoder-only LoRA without out_proj is a valid LoRA (diffusers' loader
    guessed the key layout from out_proj's or the MLP's old names and raised "Could not automatically
    infer state dict type"); it loads in both formats, each layer at W0 + alpha/r * up @ down."""
    s = _studio("tiny")
    targets = _targets(s, unet_modules=(), text_modules=modules)
    base = {name: m.weight.detach().clone() for _, name, m in targets}
    tensors, where = _kohya_file(s, tmp_path / "te.safetensors", targets, dora=False)
    path = tmp_path / "te.safetensors"
    if fmt == "diffusers":
        path = lora.convert_lora(path, tmp_path / "te_peft.safetensors", to="diffusers")
    s.load_lora(path)
    layers = dict(s.components["text_encoder"].named_modules())
    for kohya, (_, name) in where.items():
        torch.testing.assert_close(_effective_weight(layers[name], base[name]), _oracle(base[name], tensors, kohya),
                                   rtol=1e-4, atol=1e-5)
