"""The real-shape tier: SD 1.5's exact architecture (random weights, built offline) through
charstudio's paths, so shape bugs that the toy models hide show up here.

Built once per session (about 20 s, 6 GB of RAM). SDXL's real architecture (2.6B UNet
parameters) is too big for this machine's CI: here it is checked on the meta device only.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from ldm_export import export_ldm_state_dict  # noqa: E402

# Published parameter counts of the real models (SD 1.5 and SDXL base model cards / diffusers).
PARAMETERS = {
    "sd1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="session")
def sd15_arch():
    from charstudio.models.architectures import build_real_architecture
    from charstudio.models.family import SD1

    return build_real_architecture(SD1, seed=0)


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
