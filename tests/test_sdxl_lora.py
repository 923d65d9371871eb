"""LoRAs on SDXL (tiny-sdxl): written in both formats with all three components, read back by
charstudio and by diffusers' own SDXL loader alike, and named as ComfyUI's and A1111's key maps
expect (kohya's SDXL naming: lora_unet_ in SGM block numbers, lora_te1_ / lora_te2_)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from sgm_export import unet_to_sgm

from charstudio import lora
from charstudio.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a girl with long red hair"
KW = dict(seed=3, num_inference_steps=2, width=64, height=64)
# ComfyUI's comfy/lora.py LORA_CLIP_MAP: the text-encoder modules its key map names
COMFY_CLIP = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
              "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
              "self_attn.out_proj": "self_attn_out_proj"}


@pytest.fixture(scope="module")
def xl_lora_model():
    """tiny-sdxl with a random LoRA on all three parts (the model that writes the files)."""
    from peft import LoraConfig

    from charstudio.models.tiny import build_tiny_sdxl_components

    c = build_tiny_sdxl_components()
    torch.manual_seed(0)
    c["unet"].add_adapter(LoraConfig(r=4, lora_alpha=2, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name in ("text_encoder", "text_encoder_2"):
        c[name].add_adapter(LoraConfig(r=4, lora_alpha=2, init_lora_weights=False,
                                       target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]))
    return c


@pytest.fixture(scope="module")
def xl_lora(xl_lora_model, tmp_path_factory):
    """The LoRA of xl_lora_model, saved as charstudio saves trained ones."""
    c = xl_lora_model
    out = tmp_path_factory.mktemp("lora") / "heroxl"
    files = lora.save_lora(c["unet"], c["text_encoder"], out, "heroxl", text_encoder_2=c["text_encoder_2"])
    return files


def _lora_deltas(model, adapter: str) -> dict[str, torch.Tensor]:
    """Every adapted layer of `model`: its name -> the weight change its LoRA adds (peft's B @ A * scale)."""
    from peft.tuners.lora import LoraLayer

    return {name: m.get_delta_weight(adapter).detach().float() for name, m in model.named_modules()
            if isinstance(m, LoraLayer) and adapter in m.lora_A}


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_every_adapted_layer_loads_as_the_model_that_wrote_the_file_has_it(xl_lora_model, xl_lora, fmt):
    """Layer by layer, in all three parts: the model that loaded the file adapts exactly the layers
    the writing model adapted, each by the same weight change (not just via diffusers' converter,
    which charstudio itself reads with, and not a subset of the key names)."""
    s = _studio()
    name = s.load_lora(xl_lora[fmt])
    for part in ("unet", "text_encoder", "text_encoder_2"):
        wrote, loaded = _lora_deltas(xl_lora_model[part], "default"), _lora_deltas(s.components[part], name)
        assert wrote and set(loaded) == set(wrote), (part, sorted(set(wrote) ^ set(loaded))[:5])
        for layer, delta in wrote.items():
            assert delta.abs().max() > 1e-3  # a real change, so equality means something
            torch.testing.assert_close(loaded[layer], delta, atol=1e-6, rtol=1e-5, msg=f"{part}.{layer}")


def _studio():
    from charstudio import Studio

    return Studio.from_pretrained("tiny-sdxl", device="cpu")


def _px(result):
    return np.asarray(result.image, dtype=np.int16)


def test_both_formats_load_on_sdxl_and_draw_the_same(xl_lora):
    plain = _studio()
    base = _px(plain.generate(PROMPT, **KW))
    pictures = []
    for fmt in ("diffusers", "kohya"):
        s = _studio()
        name = s.load_lora(xl_lora[fmt])
        assert set(lora.loaded_adapters(s.pipeline("txt2img"))) == {name}
        te2 = s.components["text_encoder_2"]
        assert name in te2.peft_config  # the second text encoder got its part
        pictures.append(_px(s.generate(PROMPT, **KW)))
        s.set_loras({name: 0.0})
        assert np.array_equal(_px(s.generate(PROMPT, **KW)), base)  # weight 0: the base model
    assert np.abs(pictures[0] - base).mean() > 1  # the LoRA changes the picture
    assert np.abs(pictures[0] - pictures[1]).max() <= 1  # kohya and diffusers files are the same LoRA


def test_the_kohya_file_follows_comfyui_and_a1111_key_rules(xl_lora):
    """Every key is one ComfyUI's model_lora_keys_unet / model_lora_keys_clip build for SDXL: the
    UNet's as lora_unet_ + its SGM name (from the SGM layout of the same model, written by the test
    exporter that diffusers' single-file converter reads back), the text encoders' as lora_te1_ /
    lora_te2_ + text_model_encoder_layers_N_<module>. A1111 maps lora_unet_ SGM names the same
    way ("SDXL LoRAs already have compvis keys"), lora_te1_/lora_te2_ to its two embedders."""
    from charstudio.models.tiny import build_tiny_sdxl_components

    tensors, meta = lora.read_lora_file(xl_lora["kohya"])
    unet = build_tiny_sdxl_components()["unet"]
    sgm = unet_to_sgm(unet.state_dict(), unet.config)
    comfy_unet = {"lora_unet_" + k[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
                  for k in sgm if k.endswith(".weight")}
    comfy_clip = {f"lora_te{i}_text_model_encoder_layers_{b}_{v}" for i in (1, 2) for b in range(32)
                  for v in COMFY_CLIP.values()}
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors}
    assert modules and modules <= comfy_unet | comfy_clip
    assert any(m.startswith("lora_unet_input_blocks_") for m in modules)
    assert any(m.startswith("lora_unet_output_blocks_") for m in modules)
    assert {m.split("_text_model")[0] for m in modules if "_text_model" in m} == {"lora_te1", "lora_te2"}
    for m in modules:
        assert {f"{m}.lora_down.weight", f"{m}.lora_up.weight", f"{m}.alpha"} <= set(tensors)
        assert float(tensors[f"{m}.alpha"]) == 2.0
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_network_train_unet_only"] == "False"
    info = lora.inspect_lora(xl_lora["kohya"])
    assert (info.format, info.rank, info.alpha) == ("kohya", 4, 2.0)
    assert info.components == ("unet", "text_encoder", "text_encoder_2") and info.made_for.startswith("SDXL")


def test_diffusers_own_sdxl_loader_reads_our_kohya_file_the_same(xl_lora):
    """An independent reader: diffusers' StableDiffusionXLPipeline.load_lora_weights on our kohya
    file draws what charstudio draws with it."""
    from charstudio.models.family import SDXL
    from charstudio.models.tiny import build_tiny_sdxl_components

    c = build_tiny_sdxl_components()
    pipe = SDXL.build_pipeline("txt2img", {k: c[k] for k in SDXL.component_names})
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(xl_lora["kohya"]), adapter_name="theirs")
    g = torch.Generator().manual_seed(5)
    theirs = pipe(PROMPT, num_inference_steps=2, width=64, height=64, generator=g, output_type="latent").images
    s = _studio()
    s.load_lora(xl_lora["kohya"])
    g = torch.Generator().manual_seed(5)
    ours = s.pipeline("txt2img")(PROMPT, num_inference_steps=2, width=64, height=64, generator=g,
                                 output_type="latent").images
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_convert_round_trips_an_sdxl_lora(xl_lora, tmp_path):
    original, _ = lora.read_lora_file(xl_lora["kohya"])
    again = lora.convert_lora(xl_lora["diffusers"], tmp_path / "again.safetensors", to="kohya")
    rewritten, _ = lora.read_lora_file(again)
    assert set(original) == set(rewritten)
    assert all(torch.equal(original[k], rewritten[k]) for k in original)
    back = lora.convert_lora(xl_lora["kohya"], tmp_path / "back.safetensors", to="diffusers")
    s1, s2 = _studio(), _studio()
    s1.load_lora(xl_lora["diffusers"])
    s2.load_lora(back)
    assert np.abs(_px(s1.generate(PROMPT, **KW)) - _px(s2.generate(PROMPT, **KW))).max() <= 1


def test_a_civitai_style_file_in_diffusers_naming_loads_and_unknown_modules_are_counted(xl_lora, tmp_path, caplog):
    """kohya files for SDXL also come with diffusers block names (lora_unet_down_blocks_...):
    they load the same. Modules the model lacks are skipped with a count; a file none of whose
    modules exist is refused with the counts."""
    from safetensors.torch import save_file

    from charstudio.lora.kohya import _sgm_unet_module

    tensors, meta = lora.read_lora_file(xl_lora["kohya"])
    ours = lora.split_lora(tensors, meta, unet_config=_studio().components["unet"].config)
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
    a, b = _studio(), _studio()
    a.load_lora(xl_lora["kohya"])
    with caplog.at_level(logging.WARNING, logger="charstudio.lora.runtime"):
        b.load_lora(tmp_path / "civitai.safetensors")
    assert np.abs(_px(a.generate(PROMPT, **KW)) - _px(b.generate(PROMPT, **KW))).max() <= 1
    assert "are not in it and are skipped" in caplog.text

    save_file(extra, str(tmp_path / "nothing.safetensors"))
    c = _studio()
    with pytest.raises(ConfigError, match=r"none of its 1 modules exists in the model") as err:
        c.load_lora(tmp_path / "nothing.safetensors")
    assert "\n" not in str(err.value) and not c.loaded_loras


@pytest.mark.parametrize("kind", ["hada", "lokr"])
def test_lycoris_files_are_refused_naming_the_format(tmp_path, kind):
    from safetensors.torch import save_file

    keys = {"hada": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), "lokr": ("lokr_w1", "lokr_w2")}[kind]
    save_file({f"lora_unet_input_blocks_4_1_proj_in.{k}": torch.ones(2, 2) for k in keys},
              str(tmp_path / f"{kind}.safetensors"))
    with pytest.raises(ConfigError, match={"hada": "LyCORIS LoHa", "lokr": "LyCORIS LoKr"}[kind]):
        _studio().load_lora(tmp_path / f"{kind}.safetensors")


def test_a_dora_lora_loads_from_kohya_and_diffusers_files_as_peft_draws_it(tmp_path):
    """DoRA (weight-decomposed LoRA): kohya's dora_scale (output axis, shape (out, 1)) becomes
    peft's magnitude vector; both files draw what the peft model that made them draws. An
    input-axis dora_scale, which peft cannot represent, is refused naming the module."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    from charstudio.models.family import SDXL
    from charstudio.models.tiny import build_tiny_sdxl_components

    c = build_tiny_sdxl_components()
    torch.manual_seed(1)
    c["unet"].add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, use_dora=True,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():  # a magnitude other than the weight norm, so DoRA visibly differs from LoRA
        for name, p in c["unet"].named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1.5)
    files = lora.save_lora(c["unet"], None, tmp_path / "dora", "dora")
    tensors, meta = lora.read_lora_file(files["kohya"])
    assert any(k.endswith(".dora_scale") for k in tensors)
    pipe = SDXL.build_pipeline("txt2img", {k: c[k] for k in SDXL.component_names})
    pipe.set_progress_bar_config(disable=True)

    def latents(p):
        return p(PROMPT, num_inference_steps=2, width=64, height=64, generator=torch.Generator().manual_seed(5),
                 output_type="latent").images

    reference = latents(pipe)
    for fmt in ("kohya", "diffusers"):
        s = _studio()
        s.load_lora(files[fmt])
        torch.testing.assert_close(latents(s.pipeline("txt2img")), reference, atol=1e-4, rtol=1e-4)
    plain = _studio()
    assert not torch.allclose(latents(plain.pipeline("txt2img")), reference, atol=1e-3)

    key = next(k for k in tensors if k.endswith(".dora_scale"))
    down = tensors[key.replace(".dora_scale", ".lora_down.weight")]
    bad = {**tensors, key: torch.ones(1, down.shape[1])}
    save_file(bad, str(tmp_path / "input_axis.safetensors"), metadata=meta)
    with pytest.raises(ConfigError, match=r"input axis, which peft's DoRA cannot represent"):
        _studio().load_lora(tmp_path / "input_axis.safetensors")


def test_two_sdxl_loras_mix_fuse_unfuse_and_rerun_from_the_recipe(xl_lora, tmp_path):
    """Two SDXL LoRAs at weights: the mix differs from each alone, fusing draws the same as the
    adapters, unfusing goes back, and a PNG's recipe re-runs with the same adapters."""
    import shutil

    from charstudio import Result

    other = tmp_path / "other.safetensors"
    shutil.copy(xl_lora["kohya"], other)
    s = _studio()
    a = s.load_lora(xl_lora["kohya"], weight=0.7)
    b = s.load_lora(other, weight=0.0, adapter_name="other")
    only_a = s.generate(PROMPT, **KW)
    s.set_loras({a: 0.7, b: -0.5})
    mixed = s.generate(PROMPT, **KW)
    assert mixed.recipes[0].loras == {a: 0.7, b: -0.5}
    assert np.abs(_px(mixed) - _px(only_a)).mean() > 0.5
    path = mixed.save(tmp_path / "out")[0]
    s.set_loras({})
    assert np.array_equal(_px(s.run(Result.from_png(path).recipe)), _px(mixed))  # the recipe's adapters, this run
    assert s.active_loras == {}
    s.set_loras({a: 0.7, b: -0.5})
    s.fuse_loras()  # merged into the weights: the same picture, within float rounding
    assert np.abs(_px(s.generate(PROMPT, **KW)) - _px(mixed)).max() <= 1
    s.unfuse_loras()
    assert np.abs(_px(s.generate(PROMPT, **KW)) - _px(mixed)).max() <= 1
