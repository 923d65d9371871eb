"""Family detection is owned by the family (issue #35): every detector asks each family in FAMILIES
(`matches_unet`, `matches_keys`, `cross_attention_dim`), so a third family is one more entry, and
a file with two families' marks is refused instead of silently taken for one of them."""

from __future__ import annotations

import dataclasses
import json

import pytest

from charstudio.errors import ConfigError, ModelLoadError
from charstudio.models import family as fam


@pytest.mark.parametrize("name", list(fam.FAMILIES))
def test_each_familys_detection_facts_are_its_base_models_own(name):
    """The declared UNet width and inputs are those of the base model's config shipped in the package."""
    family = fam.FAMILIES[name]
    config = json.loads((family.config_folder() / "unet" / "config.json").read_text(encoding="utf-8"))
    assert family.cross_attention_dim == config["cross_attention_dim"]
    assert config.get("addition_embed_type") in family.unet_addition_embed_types
    assert family.matches_unet(config) and fam.family_of_unet(config) is family
    assert fam.family_of_width(config["cross_attention_dim"]) is family


@pytest.fixture
def third(monkeypatch):
    """A made-up third family, registered the way a real one would be: one more FAMILIES entry."""
    xl3 = dataclasses.replace(fam.SDXL, name="xl3", label="XL3", cross_attention_dim=4096,
                              unet_addition_embed_types=("text_time_3",), key_marks=("mmx.", "lora_te3_"))
    monkeypatch.setitem(fam.FAMILIES, "xl3", xl3)
    return xl3


def test_every_detector_loops_over_the_families(third):
    from charstudio.lora.formats import LoraWeights, guess_architecture
    from charstudio.lora.runtime import _model_kind

    unet_config = {"addition_embed_type": "text_time_3", "cross_attention_dim": 96}
    assert fam.family_of_unet(unet_config) is third
    assert fam.family_of_keys(["mmx.diffusion.weight"]) is third
    assert fam.family_of_lora(["lora_te3_text_model_q_proj.lora_down.weight"]) is third
    assert fam.family_of_lora([], unet_config) is third  # the model's family wins when there is a model
    assert fam.family_of_width(4096) is third and fam.architecture_of_width(4096) == "XL3"
    assert fam.architecture_of_unet(unet_config) == "XL3 (cross-attention width 96)"
    assert fam.family_of_recipe({"target_size": (64, 64)}) is fam.SDXL  # first micro-conditioned family

    class Unet:
        config = unet_config
    assert _model_kind(Unet()) == "XL3 (cross-attention width 96)"
    weights = LoraWeights(unet={}, text_encoder={}, format="kohya", extra_keys=["lora_te3_x.lora_down.weight"])
    assert guess_architecture(weights).startswith("XL3 (it has lora_te3_x")


def test_a_unet_of_no_family_is_named_not_taken_for_sd1():
    with pytest.raises(ModelLoadError, match=r"addition_embed_type='image'.*SD 1\.x: None or 'text'; SDXL: 'text_time'"):
        fam.family_of_unet({"addition_embed_type": "image"})
    assert fam.family_of_unet({"addition_embed_type": "text"}) is fam.SD1  # mini's: a pooling of the prompt


def test_keys_of_two_families_are_refused_naming_both():
    from charstudio.models.loading import check_single_file_layout

    keys = ["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.conv_in.weight",
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
            "conditioner.embedders.1.model.text_projection"]
    with pytest.raises(ConfigError, match=r"model='x\.safetensors'.*SD 1\.x and of SDXL.*inconsistent"):
        check_single_file_layout("x.safetensors", keys)
    assert fam.family_of_keys(["lora_unet_down_blocks_0.lora_down.weight"]) is None  # no family's marks
    assert fam.family_of_lora(["lora_unet_down_blocks_0.lora_down.weight"]) is fam.DEFAULT_FAMILY


def test_an_embedding_names_its_family_from_its_tensors(tmp_path):
    import torch
    from safetensors.torch import save_file

    from charstudio.embeddings import read_embedding

    save_file({"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}, str(tmp_path / "xl.safetensors"))
    save_file({"emb_params": torch.zeros(2, 768)}, str(tmp_path / "sd.safetensors"))
    assert read_embedding(tmp_path / "xl.safetensors").family is fam.SDXL
    assert read_embedding(tmp_path / "sd.safetensors").family is fam.SD1
