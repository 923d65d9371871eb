"""LoRA files: our format and kohya/A1111, loading, mixing, fusing, and refusing what does not fit.

One small LoRA (UNet + text encoder, rank 4, alpha 2 so alpha != rank is exercised) is trained
once per module on the tiny model and reused by every test here.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from charstudio import lora
from charstudio.errors import ConfigError
from helpers import lora_model, pixels, save_lora_model
from sgm_export import unet_to_sgm

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only slow them down

PROMPT = "a picture of sks person"


def _make_images(folder, n=4, size=96):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.full((size, size, 3), 40, dtype=np.uint8)
        arr[20:60, 20 + 5 * i:60 + 5 * i] = (200, 60 * i, 50)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained LoRA folder: lora/aiko/{pytorch_lora_weights,aiko}.safetensors."""
    from charstudio.training import LoraTrainingConfig, train_lora

    root = tmp_path_factory.mktemp("lora_mod")
    data = _make_images(root / "data")
    cfg = LoraTrainingConfig(model="tiny", data_dir=str(data), name="aiko", output_dir=str(root / "lora"), max_train_steps=12,
                             rank=4, alpha=2.0, learning_rate=2e-2, batch_size=2, train_text_encoder=True,
                             resolution=64,
                             validation_steps=0, num_validation_images=0, checkpointing_steps=100)
    records = list(train_lora(cfg))
    assert records[-1].done
    return root / "lora" / "aiko"


def _pipe(seed: int = 0):
    from diffusers import StableDiffusionPipeline

    from charstudio.models.tiny import build_tiny_components

    c = build_tiny_components(seed)
    pipe = StableDiffusionPipeline(**{k: c[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe) -> np.ndarray:
    """Final latents of a short fixed-seed run: as sensitive as pixels, without the VAE's cost."""
    import torch

    g = torch.Generator().manual_seed(7)
    out = pipe(PROMPT, num_inference_steps=3, generator=g, output_type="latent", height=64, width=64).images
    return out[0].numpy()


def test_training_changes_output_and_unload_load_reproduces(trained):
    pipe = _pipe()
    base = _render(pipe)
    name = lora.load_lora(pipe, trained)
    assert name == "aiko"
    with_lora = _render(pipe)
    assert np.abs(with_lora - base).max() > 1e-3, "the trained LoRA should change the picture"

    lora.unload_loras(pipe)
    assert not getattr(pipe.unet, "peft_config", None)
    np.testing.assert_array_equal(_render(pipe), base)

    lora.load_lora(pipe, trained / "pytorch_lora_weights.safetensors", adapter_name="again")
    np.testing.assert_allclose(_render(pipe), with_lora, atol=1e-6)


def test_weight_zero_reproduces_base(trained):
    pipe = _pipe()
    base = _render(pipe)
    lora.load_lora(pipe, trained, weight=0.0)
    np.testing.assert_array_equal(_render(pipe), base)
    lora.set_loras(pipe, {"aiko": 1.0})
    assert np.abs(_render(pipe) - base).max() > 1e-3
    lora.set_loras(pipe, {"aiko": 0.0})
    np.testing.assert_array_equal(_render(pipe), base)


def test_mixing_two_adapters_adds_their_weighted_updates(trained):
    single = _pipe()
    base = _render(single)
    lora.load_lora(single, trained)
    full = _render(single)

    mixed = _pipe()
    lora.load_lora(mixed, trained / "pytorch_lora_weights.safetensors", adapter_name="a")
    lora.load_lora(mixed, trained / "aiko.safetensors", adapter_name="b")
    lora.set_loras(mixed, {"a": 0.5, "b": 0.5})
    # The same adapter twice at half weight is the adapter once at full weight.
    np.testing.assert_allclose(_render(mixed), full, atol=1e-4)
    lora.set_loras(mixed, {"a": 1.0})
    np.testing.assert_allclose(_render(mixed), full, atol=1e-4)
    # charstudio.lora keeps no record: the caller says what stays on after an unload.
    lora.unload_loras(mixed, ["a"], active={"a": 1.0})
    assert lora.loaded_adapters(mixed) == ["b"]
    np.testing.assert_array_equal(_render(mixed), base)  # b is loaded but off
    lora.set_loras(mixed, {"b": 1.0})
    np.testing.assert_allclose(_render(mixed), full, atol=1e-4)
    with pytest.raises(ConfigError, match="no adapter of that name"):
        lora.set_loras(mixed, {"a": 1.0})


def test_fuse_then_unfuse(trained):
    pipe = _pipe()
    base = _render(pipe)
    lora.load_lora(pipe, trained, weight=0.7)
    unfused = _render(pipe)
    assert lora.fuse_loras(pipe, {"aiko": 0.7}) == ["aiko"]
    assert lora.fused_loras(pipe) == ["aiko"]
    np.testing.assert_allclose(_render(pipe), unfused, rtol=1e-4, atol=1e-4)
    lora.unfuse_loras(pipe)
    assert lora.fused_loras(pipe) == []
    np.testing.assert_allclose(_render(pipe), unfused, rtol=1e-4, atol=1e-4)
    # Subtracting a fused update is exact only up to float rounding, hence the tolerances.
    lora.fuse_loras(pipe, {"aiko": 0.7})
    lora.unload_loras(pipe)  # unfuses first, so the base weights come back
    np.testing.assert_allclose(_render(pipe), base, rtol=1e-4, atol=1e-4)


def test_unknown_keys_are_refused_before_loading(tmp_path):
    import torch
    from safetensors.torch import save_file

    bad = tmp_path / "mystery.safetensors"
    save_file({"model.layer.weight": torch.zeros(2, 2)}, str(bad))
    pipe = _pipe()
    with pytest.raises(ConfigError, match="fit no known LoRA format"):
        lora.load_lora(pipe, bad)
    assert not getattr(pipe.unet, "peft_config", None)

    loha = tmp_path / "loha.safetensors"
    save_file({"lora_unet_x.hada_w1_a": torch.zeros(2, 2)}, str(loha))
    with pytest.raises(ConfigError, match="LoHa"):
        lora.load_lora(pipe, loha)


def test_sdxl_lora_is_named_and_nothing_is_half_loaded(trained, tmp_path):
    import torch
    from safetensors.torch import save_file

    tensors, _ = lora.read_lora_file(trained / "aiko.safetensors")
    sdxl = {}
    for key, value in tensors.items():
        if "attn2_to_k.lora_down" in key or "attn2_to_v.lora_down" in key:
            value = torch.zeros(value.shape[0], 2048)  # SDXL's cross-attention width
        sdxl[key] = value
    sdxl["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(4, 1280)
    sdxl["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.zeros(1280, 4)
    sdxl["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.alpha"] = torch.tensor(4.0)
    path = tmp_path / "xl_style.safetensors"
    save_file(sdxl, str(path))

    pipe = _pipe()
    base = _render(pipe)
    with pytest.raises(ConfigError, match="SDXL") as err:
        lora.load_lora(pipe, path)
    assert "Nothing was loaded" in str(err.value)
    assert not getattr(pipe.unet, "peft_config", None)
    assert not getattr(pipe.text_encoder, "peft_config", None)
    np.testing.assert_array_equal(_render(pipe), base)


def test_wrong_width_names_the_architecture(trained, tmp_path):
    import torch
    from safetensors.torch import save_file

    tensors, _ = lora.read_lora_file(trained / "aiko.safetensors")
    sd15 = {k: (torch.zeros(v.shape[0], 768) if "attn2_to_k.lora_down" in k else v) for k, v in tensors.items()}
    path = tmp_path / "sd15_style.safetensors"
    save_file(sd15, str(path))
    pipe = _pipe()
    with pytest.raises(ConfigError, match=r"SD 1\.x \(cross-attention width 768\).*width 32"):
        lora.load_lora(pipe, path)
    assert not getattr(pipe.unet, "peft_config", None)


def test_paths_names_and_pickles(trained, tmp_path):
    lora_dir = trained.parent
    assert lora.resolve_lora_path("aiko", lora_dir) == trained / "pytorch_lora_weights.safetensors"
    assert lora.list_loras(lora_dir) == ["aiko"]
    with pytest.raises(ConfigError, match="no LoRA of that name.*known: aiko"):
        lora.resolve_lora_path("nobody", lora_dir)
    pickled = tmp_path / "old.ckpt"
    pickled.write_bytes(b"not even read")
    with pytest.raises(ConfigError, match="pickled"):
        lora.resolve_lora_path(pickled)
    pipe = _pipe()
    lora.load_lora(pipe, "aiko", lora_dir=lora_dir)
    with pytest.raises(ConfigError, match="already loaded"):
        lora.load_lora(pipe, "aiko", lora_dir=lora_dir)
    with pytest.raises(ConfigError, match="weight"):
        lora.load_lora(pipe, "aiko", lora_dir=lora_dir, adapter_name="x", weight=float("nan"))


def test_studio_lora_methods_and_recipes(trained, fresh_studio):
    from charstudio.character import Character

    studio = fresh_studio
    settings = dict(seed=3, num_inference_steps=2, width=64, height=64, watermark=False)
    base = np.asarray(studio.generate(PROMPT, **settings).images[0])

    name = studio.load_lora(str(trained), weight=0.8)
    assert name == "aiko" and studio.active_loras == {"aiko": 0.8}
    res = studio.generate(PROMPT, **settings)
    assert res.recipes[0].loras == {"aiko": 0.8}
    with_lora = np.asarray(res.images[0])
    assert np.abs(with_lora.astype(int) - base.astype(int)).max() > 0
    # The recipe rebuilds the image while the adapter is loaded.
    np.testing.assert_array_equal(np.asarray(studio.run(res.recipes[0]).images[0]), with_lora)
    assert studio.load_lora(str(trained), weight=0.8) == "aiko"  # same file again: no second copy

    studio.set_loras({"aiko": 0.0})
    np.testing.assert_array_equal(np.asarray(studio.generate(PROMPT, **settings).images[0]), base)
    # A recipe brings its own LoRA weights: made at 0.8, it rebuilds at 0.8 whatever is set now,
    # and the studio's own weights come back afterwards.
    studio.set_loras({"aiko": 0.3})
    np.testing.assert_array_equal(np.asarray(studio.run(res.recipes[0]).images[0]), with_lora)
    assert studio.active_loras == {"aiko": 0.3}
    base_recipe = studio.make_config(PROMPT, **settings).replace(loras={})
    np.testing.assert_array_equal(np.asarray(studio.run(base_recipe).images[0]), base)
    assert studio.active_loras == {"aiko": 0.3}
    studio.set_loras({"aiko": 0.0})
    studio.unload_loras()
    assert studio.active_loras == {}
    np.testing.assert_array_equal(np.asarray(studio.generate(PROMPT, **settings).images[0]), base)

    # A card that names its LoRA uses it (and its trigger word); a plain prompt afterwards does not.
    card = Character(name="aiko", trigger="sks", description="person", lora=str(trained), lora_weight=0.8)
    card_res = studio.generate(card, **settings)
    assert card_res.recipes[0].loras == {"aiko": 0.8}
    assert card_res.recipes[0].prompt.startswith("sks")
    assert studio.generate(PROMPT, **settings).recipes[0].loras == {}


def test_make_config_switches_no_lora_on(trained, fresh_studio, tmp_path):
    """make_config only describes: a card's LoRA goes into the recipe, not into the studio's state."""
    import shutil

    from charstudio.character import Character

    studio = fresh_studio
    settings = dict(seed=3, num_inference_steps=2, width=64, height=64, watermark=False)
    shutil.copytree(trained, tmp_path / "other")
    studio.load_lora(tmp_path / "other", weight=0.5)  # the user's own adapter, named "other"
    plain = np.asarray(studio.generate(PROMPT, **settings).images[0])
    card = Character(name="aiko", trigger="sks", description="person", lora=str(trained), lora_weight=0.8)
    recipe = studio.make_config(card, **settings)
    assert recipe.loras == {"other": 0.5, "aiko": 0.8}
    assert studio.active_loras == {"other": 0.5}  # nothing switched on by describing a picture
    assert studio.loaded_loras["aiko"].weight is None and studio.loaded_loras["aiko"].source == (
        trained / "pytorch_lora_weights.safetensors").resolve()
    with_card = np.asarray(studio.run(recipe).images[0])
    assert np.abs(with_card.astype(int) - plain).max() > 0
    assert studio.active_loras == {"other": 0.5}
    # The next picture without the card is the one from before: the card's LoRA did not stay on.
    np.testing.assert_array_equal(np.asarray(studio.generate(PROMPT, **settings).images[0]), plain)
    # The two records of old are one: unloading drops the adapter from the studio and the model.
    studio.unload_lora("aiko")
    assert set(studio.loaded_loras) == {"other"} and studio.active_loras == {"other": 0.5}
    np.testing.assert_array_equal(np.asarray(studio.generate(PROMPT, **settings).images[0]), plain)


def test_charstudio_lora_keeps_no_adapter_state():
    """The Studio owns the record of which adapters are on; charstudio.lora holds none of its own."""
    import weakref

    from charstudio.lora import runtime

    mutable = [name for name, value in vars(runtime).items() if not name.startswith("__")
               if isinstance(value, (dict, list, set, weakref.WeakKeyDictionary, weakref.WeakValueDictionary))]
    assert mutable == []


def test_training_on_a_studio_leaves_its_loras_alone(trained, fresh_studio, tmp_path):
    from safetensors.numpy import load_file

    from charstudio.models.tiny import build_tiny_components
    from charstudio.training import LoraTrainingConfig, train_lora

    studio = fresh_studio
    settings = dict(seed=3, num_inference_steps=2, width=64, height=64, watermark=False)
    studio.load_lora(str(trained), weight=1.0)
    before = np.asarray(studio.generate(PROMPT, **settings).images[0])
    data = _make_images(tmp_path / "data")

    def config(name):
        return LoraTrainingConfig(model="tiny", data_dir=str(data), name=name, output_dir=str(tmp_path / "lora"), max_train_steps=2,
                                  rank=4, alpha=4.0, learning_rate=1e-2, validation_steps=0, num_validation_images=0,
                                  resolution=64)

    list(studio.train_lora(config("on_studio")))
    assert studio.active_loras == {"aiko": 1.0}
    np.testing.assert_array_equal(np.asarray(studio.generate(PROMPT, **settings).images[0]), before)
    # The Studio's adapter (UNet and text encoder) was off while training: same result as a clean model.
    list(train_lora(config("clean"), components=build_tiny_components()))
    a = load_file(str(tmp_path / "lora" / "on_studio" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "lora" / "clean" / "pytorch_lora_weights.safetensors"))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_lora_sweep_renders_each_weight_and_leaves_the_studio_as_it_was(trained, fresh_studio):
    studio = fresh_studio
    settings = dict(seed=3, num_inference_steps=2, width=64, height=64, watermark=False)
    base = np.asarray(studio.generate(PROMPT, **settings).images[0])
    studio.load_lora(str(trained), weight=0.5)
    at_half = np.asarray(studio.generate(PROMPT, **settings).images[0])
    sweep = studio.lora_sweep(PROMPT, "aiko", [0.0, 0.5, 1.0], **settings)
    assert [r.loras for r in sweep.recipes] == [{"aiko": 0.0}, {"aiko": 0.5}, {"aiko": 1.0}]
    np.testing.assert_array_equal(np.asarray(sweep.images[0]), base)
    np.testing.assert_array_equal(np.asarray(sweep.images[1]), at_half)
    assert np.abs(np.asarray(sweep.images[2]).astype(int) - at_half.astype(int)).max() > 0
    assert studio.active_loras == {"aiko": 0.5}


def test_unloading_the_last_lora_with_text_encoder_weights_by_name(trained, fresh_studio):
    """Studio.unload_lora(name) of the only adapter, one that adapts the text encoder too."""
    studio = fresh_studio
    settings = dict(seed=3, num_inference_steps=2, width=64, height=64, watermark=False)
    base = np.asarray(studio.generate(PROMPT, **settings).images[0])
    name = studio.load_lora(str(trained), weight=0.8)
    te = studio.components["text_encoder"]
    assert name in te.peft_config  # the LoRA has text-encoder weights
    with_lora = np.asarray(studio.generate(PROMPT, **settings).images[0])
    studio.unload_lora(name)
    assert studio.active_loras == {} and getattr(te, "peft_config", None) is None
    np.testing.assert_array_equal(np.asarray(studio.generate(PROMPT, **settings).images[0]), base)
    # Loading it again works and draws what it drew before.
    assert studio.load_lora(str(trained), weight=0.8) == name
    np.testing.assert_array_equal(np.asarray(studio.generate(PROMPT, **settings).images[0]), with_lora)
    studio.unload_loras([name])
    assert studio.active_loras == {}


def test_interpolating_between_lora_weights_moves_them_with_t(trained, fresh_studio, tmp_path):
    """Each end keeps its own LoRA weights: t=0 and t=1 are the ends' own pictures, the weights
    in between move with t, and every frame recipe re-runs to its frame."""
    from charstudio.interpolation import blend_loras, load_frame_recipe, run_frame

    studio = fresh_studio
    name = studio.load_lora(str(trained), weight=1.0)
    settings = dict(seed=3, num_inference_steps=2, width=64, height=64, watermark=False)
    a = studio.make_config(PROMPT, **settings).replace(loras={name: 0.0})
    b = studio.make_config(PROMPT, **settings).replace(loras={name: 1.0})
    studio.set_loras({name: 0.3})  # what the studio has set must not leak into the frames
    frames = studio.interpolate(a, b, frames=3)
    assert [blend_loras(r.a.loras, r.b.loras, r.t) for r in frames.recipes] == [{name: 0.0}, {name: 0.5},
                                                                                    {name: 1.0}]
    for frame, end in ((frames.frames[0], a), (frames.frames[-1], b)):
        np.testing.assert_array_equal(np.asarray(frame), np.asarray(studio.run(end).images[0]))
    assert not np.array_equal(np.asarray(frames.frames[0]), np.asarray(frames.frames[-1]))
    paths = frames.save(tmp_path / "frames")
    recipe = load_frame_recipe(paths[1])
    assert recipe.to_dict()["loras"] == {name: 0.5}
    np.testing.assert_array_equal(np.asarray(run_frame(studio, recipe)), np.asarray(frames.frames[1]))
    assert studio.active_loras == {name: 0.3}


def _with_header(src, dst, edit=None, tensors_edit=None):
    """A copy of the LoRA file ``src`` whose peft header (and tensors) were edited."""
    import json

    from safetensors.torch import save_file

    tensors, meta = lora.read_lora_file(src)
    if edit is not None:
        flat = json.loads(meta[lora.ADAPTER_METADATA_KEY])
        edit(flat)
        meta[lora.ADAPTER_METADATA_KEY] = json.dumps(flat)  # json writes NaN/Infinity as peft would read them
    if tensors_edit is not None:
        tensors_edit(tensors)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def _set(key, value):
    return lambda flat: flat.__setitem__(key, value)


def _nan_first(suffix):
    def edit(tensors):
        key = next(k for k in sorted(tensors) if k.endswith(suffix))
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = float("nan")
    return edit


@pytest.mark.parametrize("name,edit,tensors_edit,expected", [
    ("huge_rank", _set("unet.r", 100000), None, r"says rank 100000 for unet\..*tensors have rank 4"),
    ("dora", _set("unet.use_dora", True), None, "use_dora=true, but the file holds no DoRA magnitude tensors"),
    ("nan_alpha", _set("unet.lora_alpha", float("nan")), None, r"NaN or infinite number at unet\.lora_alpha"),
    ("inf_pattern", _set("text_encoder.alpha_pattern", {"q_proj": float("inf")}), None,
     r"NaN or infinite number at text_encoder\.alpha_pattern\.q_proj"),
    ("text_rank", _set("unet.r", "four"), None, r"unet\.r='four'; expected a number"),
    ("untargeted", _set("unet.target_modules", ["to_q"]), None, r"does not target unet\..*to_k"),
    ("unknown_key", _set("unet.explode", 1), None, "is not a peft LoraConfig"),
    ("nan_weight", None, _nan_first(".lora_A.weight"), "holds NaN or infinite values"),
])
def test_a_lora_header_is_checked_against_its_tensors(trained, tmp_path, name, edit, tensors_edit, expected):
    """The tensors are the truth: a header that disagrees with them, or NaN/inf anywhere, is
    refused in one line naming the file, before peft allocates anything."""
    path = _with_header(trained / lora.LORA_WEIGHTS_NAME, tmp_path / f"{name}.safetensors", edit, tensors_edit)
    pipe = _pipe()
    with pytest.raises(ConfigError, match=expected) as err:
        lora.load_lora(pipe, path)
    message = str(err.value)
    assert "\n" not in message and len(message) < 300 and str(path) in message
    assert not getattr(pipe.unet, "peft_config", None) and not getattr(pipe.text_encoder, "peft_config", None)


def test_a_kohya_file_with_a_nan_alpha_is_refused(trained, tmp_path):
    path = _with_header(trained / "aiko.safetensors", tmp_path / "nan_alpha.safetensors",
                        tensors_edit=lambda t: t.__setitem__(next(k for k in sorted(t) if k.endswith(".alpha")),
                                                             __import__("torch").tensor(float("nan"))))
    pipe = _pipe()
    with pytest.raises(ConfigError, match=r"alpha holds NaN or infinite values"):
        lora.load_lora(pipe, path)
    assert not getattr(pipe.unet, "peft_config", None)


# --- the same LoRA behaviour on each family ------------------------------------------------------
# A random (non-zero) LoRA on every part of the family's tiny model (UNet, each text encoder), rank
# 4 and alpha 2, written by charstudio in both formats: each check below runs on SD 1.x and SDXL.

# Unmarked: these tests compare pictures of recipes that differ (LoRA names, weights), whose
# watermarks (each recipe's hash) would differ by a level or two.
KW = dict(seed=3, num_inference_steps=2, width=64, height=64, watermark=False)
# ComfyUI's comfy/lora.py LORA_CLIP_MAP: the text-encoder modules its key map names
COMFY_CLIP = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
              "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
              "self_attn.out_proj": "self_attn_out_proj"}


@pytest.fixture(scope="module")
def family_lora_model(family):
    """The family's tiny model with a random LoRA on all its parts (the model that writes the files)."""
    return lora_model(family)


@pytest.fixture(scope="module")
def family_lora(family, family_lora_model, tmp_path_factory):
    """family_lora_model's LoRA, saved as charstudio saves trained ones: {"diffusers": path, "kohya": path}."""
    return save_lora_model(family, family_lora_model, tmp_path_factory.mktemp("lora") / "hero", "hero")


def _lora_deltas(model, adapter: str) -> dict[str, torch.Tensor]:
    """Every adapted layer of `model`: its name -> the weight change its LoRA adds (peft's B @ A * scale)."""
    from peft.tuners.lora import LoraLayer

    return {name: m.get_delta_weight(adapter).detach().float() for name, m in model.named_modules()
            if isinstance(m, LoraLayer) and adapter in m.lora_A}


def _latents(pipe, seed: int = 5) -> torch.Tensor:
    return pipe(PROMPT, num_inference_steps=2, width=64, height=64, generator=torch.Generator().manual_seed(seed),
                output_type="latent").images


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_every_adapted_layer_loads_as_the_model_that_wrote_the_file_has_it(family, family_lora_model, family_lora,
                                                                          fmt):
    """Layer by layer, in every part: the model that loaded the file adapts exactly the layers the
    writing model adapted, each by the same weight change (not just via diffusers' converter,
    which charstudio itself reads with, and not a subset of the key names)."""
    s = family.studio()
    name = s.load_lora(family_lora[fmt])
    for part in ("unet", *family.text_encoders):
        wrote, loaded = _lora_deltas(family_lora_model[part], "default"), _lora_deltas(s.components[part], name)
        assert wrote and set(loaded) == set(wrote), (part, sorted(set(wrote) ^ set(loaded))[:5])
        for layer, delta in wrote.items():
            assert delta.abs().max() > 1e-3  # a real change, so equality means something
            torch.testing.assert_close(loaded[layer], delta, atol=1e-6, rtol=1e-5, msg=f"{part}.{layer}")


def test_both_formats_load_and_draw_the_same_and_weight_zero_is_the_base_model(family, family_studio, family_lora):
    # Unmarked: the watermark carries each recipe's hash, and these recipes differ in their `loras`.
    kw = {**KW, "watermark": False}
    base = pixels(family_studio.generate(PROMPT, **kw).image)
    pictures = []
    for fmt in ("diffusers", "kohya"):
        s = family.studio()
        name = s.load_lora(family_lora[fmt])
        assert set(lora.loaded_adapters(s.pipeline("txt2img"))) == {name}
        for part in family.text_encoders:  # every text encoder (SDXL's second too) got its part
            assert name in s.components[part].peft_config
        pictures.append(pixels(s.generate(PROMPT, **kw).image))
        s.set_loras({name: 0.0})
        assert np.array_equal(pixels(s.generate(PROMPT, **kw).image), base)  # weight 0: the base model
    assert np.abs(pictures[0] - base).mean() > 1  # the LoRA changes the picture
    assert np.abs(pictures[0] - pictures[1]).max() <= 1  # kohya and diffusers files are the same LoRA


def test_the_kohya_file_follows_comfyui_and_a1111_key_rules(family, family_lora):
    """Every key is one ComfyUI's model_lora_keys_unet / model_lora_keys_clip build for the family:
    the UNet's as lora_unet_ + its diffusers module name (SD 1.x) or its SGM name (SDXL, from the SGM
    layout of the same model, written by the test exporter that diffusers' single-file converter
    reads back), the text encoders' as lora_te_ (SD 1.x) or lora_te1_ / lora_te2_ (SDXL) +
    text_model_encoder_layers_N_<module>. A1111 maps the same names ("SDXL LoRAs already have
    compvis keys"), lora_te_ / lora_te1_ / lora_te2_ to its embedders."""
    unet = family.components()["unet"]
    if family.is_sdxl:
        sgm = unet_to_sgm(unet.state_dict(), unet.config)
        comfy_unet = {"lora_unet_" + k[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
                      for k in sgm if k.endswith(".weight")}
        blocks = ("lora_unet_input_blocks_", "lora_unet_output_blocks_")
        text_prefixes = {"lora_te1", "lora_te2"}
    else:
        comfy_unet = {"lora_unet_" + k[:-len(".weight")].replace(".", "_") for k in unet.state_dict()
                      if k.endswith(".weight")}
        blocks = ("lora_unet_down_blocks_", "lora_unet_up_blocks_")
        text_prefixes = {"lora_te"}
    comfy_clip = {f"{p}_text_model_encoder_layers_{b}_{v}" for p in text_prefixes for b in range(32)
                  for v in COMFY_CLIP.values()}
    tensors, meta = lora.read_lora_file(family_lora["kohya"])
    assert lora.detect_format(tensors) == "kohya"
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors}
    assert modules and modules <= comfy_unet | comfy_clip
    assert all(any(m.startswith(b) for m in modules) for b in blocks)
    assert {m.split("_text_model")[0] for m in modules if "_text_model" in m} == text_prefixes
    for m in modules:
        assert {f"{m}.lora_down.weight", f"{m}.lora_up.weight", f"{m}.alpha"} <= set(tensors)
        assert float(tensors[f"{m}.alpha"]) == 2.0
        assert tensors[f"{m}.lora_down.weight"].shape[0] == 4
    assert meta["ss_base_model_version"] == family.family.kohya_base_model
    assert meta["ss_network_train_unet_only"] == "False"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    info = lora.inspect_lora(family_lora["kohya"])
    assert (info.format, info.rank, info.alpha) == ("kohya", 4, 2.0)
    assert info.components == ("unet", *family.text_encoders)
    assert info.made_for.startswith("SDXL") if family.is_sdxl else "SDXL" not in info.made_for


def test_diffusers_own_loader_reads_our_kohya_file_the_same(family, family_lora):
    """An independent reader: the family's diffusers pipeline's own load_lora_weights on our kohya
    file draws what charstudio draws with it, and with our diffusers-format file."""
    pipe = family.plain_pipeline()
    pipe.load_lora_weights(str(family_lora["kohya"]), adapter_name="theirs")
    theirs = _latents(pipe)
    for fmt in ("kohya", "diffusers"):
        s = family.studio()
        s.load_lora(family_lora[fmt])
        torch.testing.assert_close(_latents(s.pipeline("txt2img")), theirs, atol=1e-5, rtol=1e-4)


def test_convert_round_trips_a_lora(family, family_lora, tmp_path):
    original, _ = lora.read_lora_file(family_lora["kohya"])
    again = lora.convert_lora(family_lora["diffusers"], tmp_path / "again.safetensors", to="kohya")
    rewritten, _ = lora.read_lora_file(again)
    assert set(original) == set(rewritten)
    assert all(torch.equal(original[k], rewritten[k]) for k in original)
    back = lora.convert_lora(family_lora["kohya"], tmp_path / "back.safetensors", to="diffusers")
    assert lora.inspect_lora(back).alpha == 2.0
    s1, s2 = family.studio(), family.studio()
    s1.load_lora(family_lora["diffusers"])
    s2.load_lora(back)
    assert np.abs(pixels(s1.generate(PROMPT, **KW).image) - pixels(s2.generate(PROMPT, **KW).image)).max() <= 1


def test_a_lora_of_the_other_family_is_refused_naming_it_and_nothing_is_loaded(family, tmp_path):
    from helpers import TinyFamily

    other = TinyFamily("sd1" if family.is_sdxl else "sdxl")
    files = save_lora_model(other, lora_model(other), tmp_path / "other", "other")
    s = family.studio()
    base = pixels(s.generate(PROMPT, **KW).image)
    for fmt in ("kohya", "diffusers"):
        with pytest.raises(ConfigError, match=r"it looks like a LoRA for .*but the model is .*Nothing was loaded") as err:
            s.load_lora(files[fmt])
        assert "\n" not in str(err.value) and "SDXL" in str(err.value) and not s.loaded_loras
        assert all(not getattr(s.components[p], "peft_config", None) for p in ("unet", *family.text_encoders))
    assert np.array_equal(pixels(s.generate(PROMPT, **KW).image), base)


def test_an_sdxl_civitai_style_file_in_diffusers_naming_loads_and_unknown_modules_are_counted(tmp_path, caplog):
    """SDXL's kohya files (SGM block names) also come with diffusers block names (lora_unet_down_blocks_...):
    they load the same. Modules the model lacks are skipped with a count; a file none of whose
    modules exist is refused with the counts."""
    from safetensors.torch import save_file

    from charstudio.lora.kohya import _sgm_unet_module
    from helpers import TinyFamily

    sdxl = TinyFamily("sdxl")
    xl_lora = save_lora_model(sdxl, lora_model(sdxl), tmp_path / "heroxl", "heroxl")

    tensors, meta = lora.read_lora_file(xl_lora["kohya"])
    ours = lora.split_lora(tensors, meta, unet_config=sdxl.studio().components["unet"].config)
    sgm_to_diffusers = {_sgm_unet_module(m, 2).replace(".", "_"): m.replace(".", "_")
                        for m in {k.partition(".lora_")[0] for k in ours.unet}}
    renamed = {}
    for k, v in tensors.items():
        head, _, tail = k.partition(".")
        if head.startswith("lora_unet_"):
            head = "lora_unet_" + sgm_to_diffusers[head[len("lora_unet_"):]]
        renamed[f"{head}.{tail}"] = v
    extra = {"lora_unet_not_a_layer.lora_down.weight": torch.ones(4, 8),
             "lora_unet_not_a_layer.lora_up.weight": torch.ones(8, 4), "lora_unet_not_a_layer.alpha": torch.tensor(4.0)}
    save_file({**renamed, **extra}, str(tmp_path / "civitai.safetensors"), metadata=meta)
    a, b = sdxl.studio(), sdxl.studio()
    a.load_lora(xl_lora["kohya"])
    with caplog.at_level(logging.WARNING, logger="charstudio.lora.runtime"):
        b.load_lora(tmp_path / "civitai.safetensors")
    assert np.abs(pixels(a.generate(PROMPT, **KW).image) - pixels(b.generate(PROMPT, **KW).image)).max() <= 1
    assert "are not in it and are skipped" in caplog.text

    save_file(extra, str(tmp_path / "nothing.safetensors"))
    c = sdxl.studio()
    with pytest.raises(ConfigError, match=r"none of its 1 modules exists in the model") as err:
        c.load_lora(tmp_path / "nothing.safetensors")
    assert "\n" not in str(err.value) and not c.loaded_loras


@pytest.mark.parametrize("kind", ["hada", "lokr"])
def test_lycoris_files_are_refused_naming_the_format(family, tmp_path, kind):
    from safetensors.torch import save_file

    keys = {"hada": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), "lokr": ("lokr_w1", "lokr_w2")}[kind]
    save_file({f"lora_unet_input_blocks_4_1_proj_in.{k}": torch.ones(2, 2) for k in keys},
              str(tmp_path / f"{kind}.safetensors"))
    with pytest.raises(ConfigError, match={"hada": "LyCORIS LoHa", "lokr": "LyCORIS LoKr"}[kind]):
        family.studio().load_lora(tmp_path / f"{kind}.safetensors")


def test_a_dora_lora_loads_from_kohya_and_diffusers_files_as_peft_draws_it(family, family_studio, tmp_path):
    """DoRA (weight-decomposed LoRA): kohya's dora_scale (output axis, shape (out, 1)) becomes
    peft's magnitude vector; both files draw what the peft model that made them draws. An
    input-axis dora_scale, which peft cannot represent, is refused naming the module."""
    from safetensors.torch import save_file

    c = lora_model(family, seed=1, alpha=4, dora=True, text_encoders=False)
    with torch.no_grad():  # a magnitude other than the weight norm, so DoRA visibly differs from LoRA
        for name, p in c["unet"].named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1.5)
    files = save_lora_model(family, c, tmp_path / "dora", "dora")
    tensors, meta = lora.read_lora_file(files["kohya"])
    assert any(k.endswith(".dora_scale") for k in tensors)
    reference = _latents(family.plain_pipeline(components=c))
    for fmt in ("kohya", "diffusers"):
        s = family.studio()
        s.load_lora(files[fmt])
        torch.testing.assert_close(_latents(s.pipeline("txt2img")), reference, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(_latents(family_studio.pipeline("txt2img")), reference, atol=1e-3)

    key = next(k for k in tensors if k.endswith(".dora_scale"))
    down = tensors[key.replace(".dora_scale", ".lora_down.weight")]
    bad = {**tensors, key: torch.ones(1, down.shape[1])}
    save_file(bad, str(tmp_path / "input_axis.safetensors"), metadata=meta)
    with pytest.raises(ConfigError, match=r"input axis, which peft's DoRA cannot represent"):
        family.studio().load_lora(tmp_path / "input_axis.safetensors")


def test_two_loras_mix_fuse_unfuse_and_rerun_from_the_recipe(family, family_lora, tmp_path):
    """Two LoRAs at weights: the mix differs from each alone, fusing draws the same as the
    adapters, unfusing goes back, and a PNG's recipe re-runs with the same adapters."""
    import shutil

    from charstudio import Result

    other = tmp_path / "other.safetensors"
    shutil.copy(family_lora["kohya"], other)
    s = family.studio()
    a = s.load_lora(family_lora["kohya"], weight=0.7)
    b = s.load_lora(other, weight=0.0, adapter_name="other")
    only_a = s.generate(PROMPT, **KW)
    s.set_loras({a: 0.7, b: -0.5})
    mixed = s.generate(PROMPT, **KW)
    assert mixed.recipes[0].loras == {a: 0.7, b: -0.5}
    assert np.abs(pixels(mixed.image) - pixels(only_a.image)).mean() > 0.5
    path = mixed.save(tmp_path / "out")[0]
    s.set_loras({})
    assert np.array_equal(pixels(s.run(Result.from_png(path).recipe).image), pixels(mixed.image))  # the recipe's adapters
    assert s.active_loras == {}
    s.set_loras({a: 0.7, b: -0.5})
    s.fuse_loras()  # merged into the weights: the same picture, within float rounding
    assert np.abs(pixels(s.generate(PROMPT, **KW).image) - pixels(mixed.image)).max() <= 1
    s.unfuse_loras()
    assert np.abs(pixels(s.generate(PROMPT, **KW).image) - pixels(mixed.image)).max() <= 1
