"""Single-file checkpoints (A1111 / civitai style) of each family load through charstudio's normal path.

The tiny model of each family is exported to the original key layout (SD 1.x: LDM,
tests/ldm_export.py; SDXL: SGM, tests/sgm_export.py), written as a `.safetensors` file, and loaded
back with `Studio.from_pretrained(file, config=folder)` (its shapes are not the real ones, so it
needs config=; tests/test_real_shapes.py loads a real-shape SD 1.x file without, and the opt-in
`sdxl_real` test here a real-shape SDXL one). Its pictures must be those of the tiny model. The
config folder is a *differently seeded* tiny model saved with its weights, so any component
diffusers took from the folder instead of the file would change the weights and pictures.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from ldm_export import CLIP_PREFIX, export_ldm_state_dict, save_ldm_checkpoint
from sgm_export import CLIP_L_PREFIX, OPEN_CLIP_PREFIX, export_sgm_state_dict, save_sgm_checkpoint

from charstudio import Studio
from charstudio.errors import ModelLoadError
from helpers import TinyFamily

# (the watermark off: it hashes the recipe, whose model names the file, not the tiny model)
SETTINGS = dict(seed=1234, num_inference_steps=2, width=64, height=64, guidance_scale=7.0,
                negative_prompt="blurry", watermark=False)
PROMPT = "a knight with a red scarf"


def _pixels(result):
    return np.asarray(result.images[0])


def _export(family, components, dtype=None):
    """The family's original single-file layout of `components` (a state dict)."""
    return export_sgm_state_dict(components, dtype=dtype) if family.is_sdxl else export_ldm_state_dict(components)


def _make_files(family, root):
    """The family's tiny model as a single file, plus a config folder from a differently seeded one."""
    import torch

    tiny, other = family.components(seed=0), family.components(seed=1)
    # Each part of the folder's model differs, so a part taken from it cannot pass for the file's.
    for name in ("unet", "vae", *family.text_encoders):
        theirs = other[name].state_dict()
        assert all(not torch.equal(v, theirs[k]) for k, v in tiny[name].state_dict().items() if v.numel() > 1 and
                   v.is_floating_point() and v.std() > 0), name
    config_dir = root / "base_model"
    family.plain_pipeline(components=other).save_pretrained(config_dir)
    save = save_sgm_checkpoint if family.is_sdxl else save_ldm_checkpoint
    checkpoint = save(tiny, root / f"{family.name}_finetune_v3.safetensors")
    return dict(root=root, config=str(config_dir), checkpoint=str(checkpoint), tiny=tiny)


@pytest.fixture(scope="module")
def family_files(family, tmp_path_factory):
    """`family`'s tiny model as a single file (root, config, checkpoint, tiny)."""
    return _make_files(family, tmp_path_factory.mktemp(f"{family.name}_single_file"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny SD 1.x model as an LDM single file, for the SD 1.x-only checks."""
    return _make_files(TinyFamily("sd1"), tmp_path_factory.mktemp("single_file"))


@pytest.fixture(scope="module")
def xl_files(tmp_path_factory):
    """The tiny SDXL as an SGM single file, for the SDXL-only checks."""
    return _make_files(TinyFamily("sdxl"), tmp_path_factory.mktemp("sdxl_single_file"))


def _assert_same_weights(got_components, want_components, *, dtype=None, names=("unet", "vae", "text_encoder")):
    """Each named part's state dict equals the wanted one (rounded to `dtype` first, if given)."""
    import torch

    for name in names:
        got, want = got_components[name].state_dict(), want_components[name].state_dict()
        assert got.keys() == want.keys(), name
        for key, value in want.items():
            expected = value.to(dtype).to(got[key].dtype) if dtype is not None and value.is_floating_point() \
                else value
            assert got[key].dtype == expected.dtype and torch.equal(got[key], expected), f"{name}: {key}"


def test_export_uses_the_ldm_layout(files):
    from safetensors import safe_open

    with safe_open(files["checkpoint"], framework="pt") as f:
        keys = set(f.keys())
        vae_q = f.get_slice("first_stage_model.encoder.mid.attn_1.q.weight").get_shape()
    # Landmarks of an original SD 1.x checkpoint, as diffusers' own model detection looks for them.
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in keys
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in keys  # upsampler after a plain level
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in keys
    assert CLIP_PREFIX + "text_model.embeddings.position_embedding.weight" in keys
    assert len(vae_q) == 4  # LDM's VAE attention is 1x1 convolutions
    assert not any(k.startswith(("down_blocks", "unet.", "vae.", "text_encoder.")) for k in keys)


def test_single_file_reproduces_the_tiny_model(family, family_studio, family_files):
    files = family_files
    studio = Studio.from_pretrained(files["checkpoint"], config=files["config"], device="cpu", dtype="fp32")
    assert studio.family is family.family
    _assert_same_weights(studio.components, files["tiny"], names=("unet", "vae", *family.text_encoders))
    result = studio.generate(PROMPT, **SETTINGS)
    assert result.recipes[0].model == files["checkpoint"]
    reference = _pixels(family_studio.generate(PROMPT, **SETTINGS))
    if family.is_sdxl:
        # Equal weights; tensors read from a file can sit at another memory alignment, where the
        # CPU's matrix kernels round the last bits of SDXL's pooled embedding differently (2e-7), so
        # allow a level or two.
        assert np.abs(_pixels(result).astype(np.int16) - reference.astype(np.int16)).max() <= 2
    else:
        np.testing.assert_array_equal(_pixels(result), reference)


def test_a_resized_single_file_without_config_names_the_shapes_and_config(files):
    """Without config= a file is read with SD 1.5's shipped configs; the tiny model's shapes are
    not SD 1.5's, and the error names the first tensor that differs and the way out."""
    with pytest.raises(ModelLoadError) as err:
        Studio.from_pretrained(files["checkpoint"], device="cpu", dtype="fp32")
    msg = str(err.value)
    assert "\n" not in msg
    assert files["checkpoint"] in msg and "config=" in msg and "--config" in msg
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in msg and "expected [77, 768], got [77, 32]" in msg


@pytest.mark.parametrize("case", ["unrelated keys", "no text encoder", "lora"])
def test_file_that_is_not_an_sd1_checkpoint(files, case):
    import torch
    from safetensors.torch import save_file

    if case == "unrelated keys":
        tensors = {"encoder.layer.0.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}
        expected = ["UNet (model.diffusion_model.*)", "encoder.*", "head.*"]
    elif case == "no text encoder":
        # Without this check diffusers would quietly take the text encoder from the config folder.
        tensors = {k: v for k, v in export_ldm_state_dict(files["tiny"]).items() if not k.startswith(CLIP_PREFIX)}
        expected = ["CLIP text encoder (cond_stage_model.transformer.*)"]
    else:
        tensors = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
                   "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}
        expected = ["LoRA", "load_lora"]
    path = files["root"] / f"{case.replace(' ', '_')}.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ModelLoadError) as err:
        Studio.from_pretrained(str(path), config=files["config"], device="cpu", dtype="fp32")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    for part in expected:
        assert part in msg
    if case != "lora":
        assert "A1111/civitai SD 1.x or SDXL checkpoint" in msg  # says what would work


def test_pickled_checkpoint_needs_opt_in_and_then_loads(family, family_files):
    import torch

    files = family_files
    ckpt = files["root"] / "finetune_v3.ckpt"
    torch.save({"state_dict": _export(family, files["tiny"])}, ckpt)
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        Studio.from_pretrained(str(ckpt), config=files["config"], device="cpu", dtype="fp32")

    studio = Studio.from_pretrained(str(ckpt), config=files["config"], allow_pickle=True, device="cpu", dtype="fp32")
    # same weights as the .safetensors, whose pictures match
    _assert_same_weights(studio.components, files["tiny"], names=("unet", "vae", *family.text_encoders))


class _TouchOnUnpickle:
    """Unpickling this runs code (creates a file), the way a malicious checkpoint would."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickled_checkpoint_is_read_with_weights_only(files, tmp_path):
    import torch

    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    marker = tmp_path / "code_ran"
    state = export_ldm_state_dict(files["tiny"])
    ckpt = tmp_path / "payload.ckpt"
    torch.save({"state_dict": state, "callbacks": _TouchOnUnpickle(marker)}, ckpt)
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        Studio.from_pretrained(str(ckpt), config=files["config"], allow_pickle=True, device="cpu", dtype="fp32")
    # diffusers' own reader (used after our check) refuses it too.
    with pytest.raises(OSError):
        load_single_file_checkpoint(str(ckpt))
    assert not marker.exists()


def test_config_only_applies_to_single_files(family, family_files):
    files = family_files
    with pytest.raises(ModelLoadError, match="only applies to single-file"):
        Studio.from_pretrained(family.model, config=files["config"], device="cpu")
    with pytest.raises(ModelLoadError, match="model_index.json"):
        Studio.from_pretrained(files["checkpoint"], config=str(files["root"]), device="cpu")


def test_cli_config_flag(family_files, tmp_path, capsys):
    from charstudio.cli import main

    files = family_files
    common = ["generate", PROMPT, "--model", files["checkpoint"], "--device", "cpu", "--steps", "1",
              "--width", "64", "--height", "64", "--seed", "5"]
    assert main(common + ["--out", str(tmp_path / "none")]) == 2
    assert "--config" in capsys.readouterr().err
    assert main(common + ["--config", files["config"], "--out", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_train_lora_on_a_single_file_checkpoint(family, family_files, tmp_path, capsys):
    """`train-lora --model FILE --config BASE` trains on the file's own weights, offline, and writes
    a kohya file in the family's naming (SDXL: lora_unet_ SGM blocks, as A1111 and ComfyUI read it;
    UNet only by default on both); the LoRA then changes that checkpoint's pictures. A pickled .ckpt
    needs --allow-pickle here too."""
    import json

    import torch
    from PIL import Image

    from charstudio import lora
    from charstudio.cli import main

    files = family_files
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        arr = np.full((64, 64, 3), 40, dtype=np.uint8)
        arr[10:50, 8 + 6 * i:40 + 6 * i] = (220, 50 * i, 60)
        Image.fromarray(arr).save(data / f"img{i}.png")
    common = ["train-lora", str(data), "--name", "aiko", "--output-dir", str(tmp_path / "lora"), "--steps", "3",
              "--rank", "4", "--lr", "5e-2", "--lr-scheduler", "cosine", "--warmup-steps", "1", "--resolution", "64",
              "--batch-size", "2", "--validation-images", "0", "--config", files["config"]]
    assert main(common + ["--model", files["checkpoint"]]) == 0
    record = json.loads((tmp_path / "lora" / "aiko" / "training_config.json").read_text())["config"]
    assert (record["model"], record["model_config"]) == (files["checkpoint"], files["config"])
    assert (record["lr_scheduler"], record["lr_warmup_steps"]) == ("cosine", 1)
    tensors, meta = lora.read_lora_file(tmp_path / "lora" / "aiko" / "aiko.safetensors")
    assert meta["ss_base_model_version"] == family.family.kohya_base_model
    assert any(k.startswith("lora_unet_input_blocks_" if family.is_sdxl else "lora_unet_down_blocks_") for k in tensors)
    assert all(k.startswith("lora_unet_") for k in tensors)  # UNet only by default

    studio = Studio.from_pretrained(files["checkpoint"], config=files["config"], device="cpu", dtype="fp32")
    plain = _pixels(studio.generate(PROMPT, **SETTINGS))
    studio.load_lora(tmp_path / "lora" / "aiko")
    assert np.abs(_pixels(studio.generate(PROMPT, **SETTINGS)).astype(int) - plain).max() > 0

    ckpt = files["root"] / "train_me.ckpt"
    torch.save({"state_dict": _export(family, files["tiny"])}, ckpt)
    capsys.readouterr()
    pickled = common[:3] + ["pickled"] + common[4:] + ["--model", str(ckpt)]
    assert main(pickled) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert not (tmp_path / "lora" / "pickled").exists()
    assert main(pickled + ["--allow-pickle"]) == 0
    assert (tmp_path / "lora" / "pickled" / "pytorch_lora_weights.safetensors").is_file()


# ---- SDXL only: the SGM layout, its two text encoders ----------------------------------------------

WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2")


def test_export_uses_the_sgm_layout(xl_files):
    from safetensors import safe_open

    from charstudio.models.family import SDXL
    from charstudio.models.loading import check_single_file_layout, checkpoint_keys

    with safe_open(xl_files["checkpoint"], framework="pt") as f:
        keys = set(f.keys())
        in_proj = f.get_slice(OPEN_CLIP_PREFIX + "transformer.resblocks.0.attn.in_proj_weight").get_shape()
    # Landmarks of an original SDXL checkpoint, as diffusers' own code looks for them.
    assert "model.diffusion_model.label_emb.0.0.weight" in keys  # the size/crop + pooled text embedding
    assert "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight" in keys  # depth 2
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in keys  # upsampler after a level's attention
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in keys
    assert CLIP_L_PREFIX + "text_model.embeddings.position_embedding.weight" in keys
    assert {OPEN_CLIP_PREFIX + k for k in ("positional_embedding", "text_projection", "token_embedding.weight",
                                           "ln_final.weight")} <= keys
    width = xl_files["tiny"]["text_encoder_2"].config.hidden_size
    assert in_proj == [3 * width, width]  # q, k and v packed, as OpenCLIP stores them
    assert not any(".self_attn." in k or "layer_norm" in k for k in keys if k.startswith(OPEN_CLIP_PREFIX))
    assert check_single_file_layout(xl_files["checkpoint"], checkpoint_keys(xl_files["checkpoint"])) is SDXL


def test_export_refuses_keys_it_cannot_place(xl_files):
    import torch
    from ldm_export import UnmappedKeyError

    from sgm_export import open_clip_to_sgm, unet_to_sgm

    unet = xl_files["tiny"]["unet"]
    with pytest.raises(UnmappedKeyError):
        unet_to_sgm({**unet.state_dict(), "encoder_hid_proj.weight": torch.zeros(1)}, unet.config)
    with pytest.raises(UnmappedKeyError):
        open_clip_to_sgm({**xl_files["tiny"]["text_encoder_2"].state_dict(), "text_model.pooler.weight": torch.zeros(1)})


# diffusers 0.42 picks the checkpoint part for a CLIPTextModel* by width alone (ViT-L's keys when
# their width matches, tried first), so tiny SDXL's encoders are 32 and 48 wide, as SDXL's are 768 and
# 1280; charstudio.models.loading refuses a load that left any weight unfilled.


def _load_tiny_sdxl_file(xl_files):
    import torch

    from charstudio.models.loading import load_components, resolve_model

    return load_components(resolve_model(xl_files["checkpoint"]), dtype=torch.float32, config=xl_files["config"])


def test_load_components_takes_the_unet_vae_and_vit_l_from_the_file(xl_files):
    loaded = _load_tiny_sdxl_file(xl_files)
    assert type(loaded["text_encoder_2"]).__name__ == "CLIPTextModelWithProjection"
    _assert_same_weights(loaded, xl_files["tiny"], names=("unet", "vae", "text_encoder"))


def test_load_components_takes_text_encoder_2_from_the_file(xl_files):
    loaded = _load_tiny_sdxl_file(xl_files)
    assert not any(p.is_meta for p in loaded["text_encoder_2"].parameters()), "parts of text_encoder_2 were not loaded"
    _assert_same_weights(loaded, xl_files["tiny"], names=("text_encoder_2",))


def test_open_clip_keys_round_trip_through_diffusers_converter(xl_files):
    """The OpenCLIP half of the file read by diffusers' own converter on its own (so its
    width-based choice of encoder cannot pick ViT-L's keys) gives text_encoder_2 back exactly."""
    import torch
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from safetensors.torch import load_file
    from transformers import CLIPTextModelWithProjection

    open_clip = {k: v for k, v in load_file(xl_files["checkpoint"]).items() if k.startswith(OPEN_CLIP_PREFIX)}
    model = create_diffusers_clip_model_from_ldm(CLIPTextModelWithProjection, open_clip, config=xl_files["config"],
                                                 subfolder="text_encoder_2", torch_dtype=torch.float32)
    _assert_same_weights({"text_encoder_2": model}, xl_files["tiny"], names=("text_encoder_2",))


def test_export_state_dict_casts_only_floating_tensors(xl_files):
    import torch

    state = export_sgm_state_dict(xl_files["tiny"], dtype=torch.float16)
    assert state[CLIP_L_PREFIX + "text_model.embeddings.position_ids"].dtype == torch.int64
    assert {v.dtype for k, v in state.items() if not k.endswith("position_ids")} == {torch.float16}


# ---- opt-in: SDXL's real architecture (random weights): 3.5 minutes on 2 cores, a peak of 17 GB of RAM
# (anonymous; the mmapped file adds page cache) and 14 GB of temporary disk ----------------------------------------


def _selected_sdxl_real(config) -> bool:
    """Whether `-m` names sdxl_real. pyproject's addopts add no `-m`, so a plain `pytest` would
    otherwise run this test, which needs most of a 23 GB machine's RAM."""
    return "sdxl_real" in (config.getoption("-m") or "") and "not sdxl_real" not in config.getoption("-m")


@pytest.mark.sdxl_real
def test_real_sdxl_architecture_single_file_loads_without_config(request, tmp_path):
    """SDXL's real architecture, exported in fp16 as civitai files ship, loads with no config=:
    from the SDXL configs charstudio ships and the real CLIP tokenizers, offline. The fp16-rounded
    originals wait on disk while the file loads, so only the fp32 model is in memory then."""
    if not _selected_sdxl_real(request.config):
        pytest.skip("SDXL's real size needs about 17 GB of RAM and 14 GB of disk: run with `pytest -m sdxl_real`")
    import gc
    import shutil

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from charstudio.models.architectures import build_real_architecture
    from charstudio.models.family import SDXL
    from charstudio.models.loading import load_components, resolve_model

    request.addfinalizer(lambda: shutil.rmtree(tmp_path, ignore_errors=True))  # 14 GB pytest would keep
    original = build_real_architecture(SDXL, seed=0, controlnet=False)
    for name in WEIGHTED:
        original[name].to(torch.float16)  # in place: the fp16 rounding the file gets
    path = save_sgm_checkpoint(original, tmp_path / "sdxl_real_fp16.safetensors", dtype=torch.float16)
    for name in WEIGHTED:
        save_file(original[name].state_dict(), str(tmp_path / f"{name}.safetensors"))
    del original
    gc.collect()

    loaded = load_components(resolve_model(str(path)), dtype=torch.float32)
    assert type(loaded["text_encoder_2"]).__name__ == "CLIPTextModelWithProjection"
    assert loaded["unet"].config.addition_embed_type == "text_time"
    for name in WEIGHTED:
        got = loaded[name].state_dict()
        with safe_open(str(tmp_path / f"{name}.safetensors"), framework="pt") as want:
            assert set(want.keys()) == got.keys(), name
            for key in want.keys():
                value = want.get_tensor(key)
                expected = value.to(torch.float32) if value.is_floating_point() else value
                assert got[key].dtype == expected.dtype and torch.equal(got[key], expected), f"{name}: {key}"
    for name in ("tokenizer", "tokenizer_2"):
        assert loaded[name]("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407], name
