"""The real-shape tier: SD 1.5's exact architecture (random weights, built offline) through
charstudio's paths, so shape bugs that the toy models hide show up here.

Built once per session (about 20 s, 6 GB of RAM): the `sd15-arch` preset's parts. Every feature
runs once on it at 64 px with one or two steps: generate and pose, a sheet with reference
attention, interpolation, a trace with attention maps, LoRA training (2 steps), saving in both
formats, loading and fusing, and an embedding. SDXL's real architecture (2.6B UNet parameters) is
too big for this machine's CI: here it is checked on the meta device, and `pytest -m sdxl_real`
loads a real-size SDXL single file (tests/test_sdxl_single_file.py).
"""

from __future__ import annotations

import os

import pytest

from ldm_export import export_ldm_state_dict

# Published parameter counts of the real models (SD 1.5 and SDXL base model cards / diffusers).
PARAMETERS = {
    "sd1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="session")
def sd15_arch():
    from charstudio.models.loading import BUILTIN_BUILDERS

    return BUILTIN_BUILDERS["sd15-arch"]()


@pytest.fixture(scope="module")
def studio(sd15_arch):
    """A Studio over the same parts (no second copy in memory), as `from_pretrained("sd15-arch")` makes."""
    import torch

    from charstudio import Studio

    return Studio(sd15_arch, model_id="sd15-arch", device=torch.device("cpu"), dtype=torch.float32,
                  default_size=512)


FAST = dict(num_inference_steps=1, width=64, height=64, seed=3)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_shipped_configs_are_the_real_architectures(family):
    """Built on the meta device (no memory), every part has the published parameter count."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from charstudio.models.family import FAMILIES

    folder = FAMILIES[family].config_folder()
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        built = {"unet": unet, "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))}
        for name in ("text_encoder", "text_encoder_2"):
            if (folder / name).is_dir():
                config = CLIPTextConfig.from_pretrained(folder / name)
                cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
                built[name] = cls(config)
    assert {name: _count(m) for name, m in built.items()} == PARAMETERS[family]


@pytest.mark.parametrize("pad", ["<|endoftext|>", "!"])
def test_the_offline_clip_tokenizer_gives_the_real_ids(pad):
    from charstudio.models.tokenizers import clip_tokenizer

    tok = clip_tokenizer(pad)
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = tok("a cat", padding="max_length", max_length=6).input_ids
    assert padded == [49406, 320, 2368, 49407] + [0 if pad == "!" else 49407] * 2  # "!" is CLIP's id 0


def test_sd15_arch_has_the_real_counts_and_seeded_weights(sd15_arch):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from charstudio.models.architectures import _fill
    from charstudio.models.family import SD1

    assert {k: _count(sd15_arch[k]) for k in PARAMETERS["sd1"]} == PARAMETERS["sd1"]
    assert sd15_arch["controlnet"].config.block_out_channels == sd15_arch["unet"].config.block_out_channels
    assert torch.isfinite(sd15_arch["unet"].conv_in.weight).all()

    def text_encoder(seed):
        with torch.device("meta"):
            model = CLIPTextModel(CLIPTextConfig.from_pretrained(SD1.config_folder() / "text_encoder"))
        model = _fill(model, torch.Generator().manual_seed(seed))
        return {**dict(model.named_parameters()), **dict(model.named_buffers())}

    first, again, other = text_encoder(0), text_encoder(0), text_encoder(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    fc1 = next(k for k in first if k.endswith("layers.0.mlp.fc1.weight"))
    assert not torch.equal(first[fc1], other[fc1])
    position_ids = next(v for k, v in first.items() if k.endswith("position_ids"))
    assert torch.equal(position_ids, torch.arange(77)[None])


def test_an_sd15_single_file_loads_offline_without_config(sd15_arch, tmp_path):
    """An A1111/civitai-layout SD 1.5 file (fp16, as they are shared) loads with no config= and
    no hub: the UNet, VAE and text encoder hold the file's weights exactly, and the prompt is
    read with the real CLIP ids."""
    import torch
    from safetensors.torch import save_file

    from charstudio.models.loading import load_components, resolve_model

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    path = tmp_path / "my_sd15_finetune.safetensors"
    save_file({k: v.half() for k, v in export_ldm_state_dict(sd15_arch).items()}, str(path))
    loaded = load_components(resolve_model(str(path)), dtype=torch.float32)
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = sd15_arch[name].state_dict(), loaded[name].state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k].half().float(), theirs[k]) for k in ours), name
    assert loaded["tokenizer"]("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def _px(image):
    import numpy as np

    return np.asarray(image, dtype=np.int16)


def test_generate_and_a_pose_on_the_real_shapes(studio):
    import numpy as np

    a = studio.generate("a girl with red hair", **FAST)
    assert a.image.size == (64, 64) and np.array_equal(_px(a.image), _px(studio.run(a.recipe).image))
    posed = studio.generate("a girl with red hair", pose="waving", **FAST)
    assert type(studio.pipeline("controlnet").controlnet).__name__ == "ControlNetModel"
    assert not np.array_equal(_px(posed.image), _px(a.image))
    long = studio.generate(", ".join(["a girl with long red hair and a blue dress"] * 12), **FAST)  # 2 chunks
    assert long.image.size == (64, 64)


def test_a_sheet_with_reference_attention_and_an_interpolation_on_the_real_shapes(studio):
    sheet = studio.sheet("a knight", ["standing_front", "walking"], seed=2, reference_strength=0.5,
                         num_inference_steps=1, width=64, height=64)
    assert len(sheet.images) == 2 and sheet.grid_image is not None
    frames = studio.interpolate("a knight in red armour", "a knight in blue armour", frames=3, **FAST)
    assert len(frames.frames) == 3


def test_a_trace_maps_attention_over_the_real_77_tokens(studio):
    trace, result = studio.trace("a girl with red hair", attention=True, num_inference_steps=2, width=64, height=64,
                                 seed=1)
    assert len(trace.records) == 2 and trace.attention.shape == (77, 8, 8)
    assert float(trace.attention.sum(0).mean()) == pytest.approx(1.0, abs=1e-3)


def test_lora_training_saving_loading_and_fusing_on_the_real_shapes(studio, tmp_path):
    import numpy as np
    from PIL import Image

    from charstudio import lora
    from charstudio.training import LoraTrainingConfig

    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        arr = np.full((64, 64, 3), 40, dtype=np.uint8)
        arr[10:50, 8 + 8 * i:40 + 8 * i] = (220, 60, 50)
        Image.fromarray(arr).save(data / f"img{i}.png")
    config = LoraTrainingConfig(data_dir=str(data), name="real", model="sd15-arch", output_dir=str(tmp_path / "lora"),
                                max_train_steps=2, rank=4, learning_rate=1e-2, resolution=64,
                                num_validation_images=0, train_text_encoder=True)
    steps = list(studio.train_lora(config))
    assert len(steps) == 2 and all(np.isfinite(s.loss) for s in steps)
    folder = tmp_path / "lora" / "real"
    tensors, _ = lora.read_lora_file(folder / "real.safetensors")
    assert any(k.startswith("lora_te_text_model_encoder_layers_11_") for k in tensors)  # all 12 CLIP layers
    assert any(k.startswith("lora_unet_up_blocks_3_attentions_2_") for k in tensors)  # SD 1.5's 4 levels
    plain = studio.generate("a girl", **FAST)
    name = studio.load_lora(folder / "real.safetensors")
    with_lora = studio.generate("a girl", **FAST)
    studio.fuse_loras()
    fused = studio.generate("a girl", **FAST)
    studio.unload_loras()
    unloaded = studio.generate("a girl", **FAST)
    assert np.abs(_px(with_lora.image) - _px(fused.image)).max() <= 2
    assert with_lora.recipe.loras == {name: 1.0} and plain.recipe.loras == {} and unloaded.recipe.loras == {}
    # The LoRA (two steps at lr 1e-2 on all 12 CLIP layers and the UNet) moves the picture, and
    # unloading (after fusing) gives back the plain picture, to within float rounding.
    effect = np.abs(_px(with_lora.image) - _px(plain.image)).mean()
    assert effect > 10, effect  # measured 52
    assert np.abs(_px(unloaded.image) - _px(plain.image)).max() <= 1


def test_an_embedding_on_the_real_768_wide_encoder(studio, tmp_path):
    import torch
    from safetensors.torch import save_file

    vectors = torch.randn(2, 768) * 0.02
    save_file({"emb_params": vectors}, str(tmp_path / "realneg.safetensors"))
    token = studio.load_embedding(tmp_path / "realneg.safetensors")
    try:
        result = studio.generate("a girl", negative_prompt=f"({token}:1.2)", **FAST)
        assert result.recipe.embeddings == {token: str((tmp_path / "realneg.safetensors").resolve())}
        ids = studio.components["tokenizer"].convert_tokens_to_ids([token, f"{token}_1"])
        table = studio.components["text_encoder"].get_input_embeddings().weight
        torch.testing.assert_close(table[ids].detach(), vectors)
    finally:
        studio.unload_embedding(token)
