"""IP-Adapter on SDXL (`tiny-sdxl`): the family's "plus" adapter in h94/IP-Adapter's layout,
found from the family's defaults, steering the picture through the SDXL pipelines, unloaded
afterwards; an adapter of the other family is refused before anything loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_sheets import ip_adapter_layers

from charstudio.errors import ConfigError, ModelLoadError
from charstudio.models.family import IPAdapterFiles
from helpers import pixels as px

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*gives poor pictures:UserWarning")]  # 64 px on tiny-sdxl

FAST = dict(num_inference_steps=2, width=64, height=64)
PLUS = "ip-adapter-plus_sdxl_vit-h.safetensors"  # SDXL's default, in sdxl_models/


def _tiny_plus_ip_adapter(unet, folder, weight_name: str = PLUS, seed: int = 0, encoder: bool = True):
    """A random "plus" IP-Adapter for ``unet`` in h94/IP-Adapter's SDXL layout: the CLIP image
    encoder in models/image_encoder/, and sdxl_models/<weight_name> with the original Resampler's
    keys (image_proj.latents, proj_in, proj_out, norm_out, layers.<i>.0.{norm1,norm2,to_q,to_kv,
    to_out}, layers.<i>.1.{0,1,3}, as diffusers' `_convert_ip_adapter_image_proj_to_diffusers`
    reads them) and ip_adapter.<k>.to_{k,v}_ip for each cross-attention layer, k = 1, 3, 5, ...
    in processor order."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    if encoder:
        CLIPVisionModelWithProjection(CLIPVisionConfig(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, projection_dim=16)).save_pretrained(folder / "models" / "image_encoder")
    # diffusers builds the resampler with 4 blocks and heads = to_q rows / 64: one 64-wide head.
    cross, features, hidden, queries = unet.config.cross_attention_dim, 32, 64, 4
    state = {"image_proj.latents": torch.randn(1, queries, hidden) / hidden ** 0.5,
             "image_proj.proj_in.weight": torch.randn(hidden, features) * 0.2,
             "image_proj.proj_in.bias": torch.zeros(hidden),
             "image_proj.proj_out.weight": torch.randn(cross, hidden) * 0.2,
             "image_proj.proj_out.bias": torch.zeros(cross),
             "image_proj.norm_out.weight": torch.ones(cross), "image_proj.norm_out.bias": torch.zeros(cross)}
    for i in range(4):
        block = f"image_proj.layers.{i}."
        for norm in ("0.norm1", "0.norm2", "1.0"):
            state[f"{block}{norm}.weight"], state[f"{block}{norm}.bias"] = torch.ones(hidden), torch.zeros(hidden)
        state[f"{block}0.to_q.weight"] = torch.randn(hidden, hidden) * 0.1
        state[f"{block}0.to_kv.weight"] = torch.randn(2 * hidden, hidden) * 0.1
        state[f"{block}0.to_out.weight"] = torch.randn(hidden, hidden) * 0.1
        state[f"{block}1.1.weight"] = torch.randn(4 * hidden, hidden) * 0.1
        state[f"{block}1.3.weight"] = torch.randn(hidden, 4 * hidden) * 0.1
    state.update(ip_adapter_layers(unet, cross))
    (folder / "sdxl_models").mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "sdxl_models" / weight_name))
    return folder / "sdxl_models" / weight_name


def _real_width_adapter(path, cross: int, layers: int = 2):
    """A weight file whose to_k_ip layers are as wide as a real family's UNet (SD 1.5: 768,
    SDXL: 2048), with few rows: only its header is ever read."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"image_proj.proj.weight": torch.zeros(4 * cross, 8, dtype=torch.float16)}
    for i in range(layers):
        for proj in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{2 * i + 1}.{proj}.weight"] = torch.zeros(8, cross, dtype=torch.float16)
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def xl():
    """One tiny-sdxl Studio for the module; every test leaves it without an adapter (and checks)."""
    from charstudio import Studio

    return Studio.from_pretrained("tiny-sdxl", device="cpu")


@pytest.fixture(scope="module")
def h94(xl, tmp_path_factory):
    """A local folder laid out like h94/IP-Adapter, holding SDXL's default files only."""
    folder = tmp_path_factory.mktemp("h94")
    _tiny_plus_ip_adapter(xl.components["unet"], folder)
    return folder


@pytest.fixture(scope="module")
def images():
    from PIL import Image

    return Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))


def _assert_clean(studio, processors) -> None:
    unet = studio.components["unet"]
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    assert unet.attn_processors == processors  # the very processor objects from before
    for kind in ("txt2img", "controlnet"):
        assert studio.pipeline(kind).image_encoder is None and studio.pipeline(kind).feature_extractor is None


def test_plus_adapter_steers_sdxl_and_is_unloaded(xl, h94, images):
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    from charstudio.sheets import ip_adapter

    red, blue = images
    unet = xl.components["unet"]
    before = unet.attn_processors
    plain = xl.generate("a knight", seed=1, **FAST).image
    seen = []  # what the UNet receives, after the adapter's hook (hooks run in order)
    with ip_adapter(xl, str(h94), red, 1.0) as files:
        # An SDXL Studio given just the folder finds the family's files.
        assert files == IPAdapterFiles(str(h94), "sdxl_models", PLUS, "models/image_encoder")
        assert isinstance(unet.encoder_hid_proj.image_projection_layers[0], IPAdapterPlusImageProjection)
        spy = unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["added_cond_kwargs"]), with_kwargs=True)
        with_red = xl.generate("a knight", seed=1, **FAST).image
        spy.remove()
    with ip_adapter(xl, str(h94), blue, 1.0):
        with_blue = xl.generate("a knight", seed=1, **FAST).image
    after = xl.generate("a knight", seed=1, **FAST).image

    # SDXL's own added conditions are kept, and the "plus" adapter gets the image encoder's
    # penultimate hidden states (17 tokens x 32), [uncond, cond], which its resampler reads.
    assert set(seen[0]) == {"text_embeds", "time_ids", "image_embeds"}
    assert seen[0]["time_ids"].shape == (2, 6) and tuple(seen[0]["image_embeds"][0].shape) == (2, 1, 17, 32)
    assert np.abs(px(with_red) - px(plain)).mean() > 1  # the adapter changes the picture
    assert np.abs(px(with_red) - px(with_blue)).mean() > 1  # and the reference image steers it
    assert (px(after) == px(plain)).all()  # unloaded on exit
    _assert_clean(xl, before)


def test_sheet_on_sdxl_takes_the_family_defaults_and_records_them(xl, h94, images):
    red, _ = images
    before = xl.components["unet"].attn_processors
    plain = xl.sheet("a knight", ["walking"], seed=1, **FAST)
    sheet = xl.sheet("a knight", ["walking"], seed=1, ip_adapter_weights=str(h94), ip_adapter_image=red,
                     ip_adapter_scale=1.0, **FAST)
    assert np.abs(px(sheet.images[0]) - px(plain.images[0])).mean() > 1  # through the SDXL ControlNet pipeline
    assert {k: v for k, v in sheet.settings.items() if k.startswith("ip_adapter")} == {
        "ip_adapter": str(h94), "ip_adapter_scale": 1.0, "ip_adapter_subfolder": "sdxl_models",
        "ip_adapter_weight_name": PLUS, "ip_adapter_image_encoder_folder": "models/image_encoder"}
    # With reference attention on top (its processors wrap the adapter's, then give them back).
    both = xl.sheet("a knight", ["standing_front", "walking"], seed=1, reference_strength=0.5,
                    ip_adapter_weights=str(h94), ip_adapter_image=red, **FAST)
    assert len(both.images) == 2
    again = xl.sheet("a knight", ["walking"], seed=1, **FAST)
    assert (px(again.images[0]) == px(plain.images[0])).all()
    _assert_clean(xl, before)


def test_other_files_by_name_or_by_path(xl, h94, images, tmp_path):
    from charstudio.sheets import ip_adapter

    red, _ = images
    import shutil

    shutil.copytree(h94, tmp_path, dirs_exist_ok=True)
    other = _tiny_plus_ip_adapter(xl.components["unet"], tmp_path, "my-adapter.safetensors", seed=5, encoder=False)
    pictures = {}
    for label, weights, kwargs in [("default", str(tmp_path), {}),
                                   ("by name", str(tmp_path), {"weight_name": "my-adapter.safetensors"}),
                                   ("by path", str(other), {})]:
        with ip_adapter(xl, weights, red, 1.0, **kwargs) as files:
            pictures[label] = px(xl.generate("a knight", seed=1, **FAST).image)
        assert files.image_encoder_folder == "models/image_encoder"
    assert files == IPAdapterFiles(str(tmp_path.resolve()), "sdxl_models", "my-adapter.safetensors",
                                   "models/image_encoder")
    assert (pictures["by name"] == pictures["by path"]).all()
    assert np.abs(pictures["by name"] - pictures["default"]).mean() > 1
    with pytest.raises(ConfigError, match="ip_adapter_weight_name='x.safetensors' is not valid: nothing when"):
        with ip_adapter(xl, str(other), red, weight_name="x.safetensors"):
            pass


def test_wrong_family_adapter_is_refused_before_loading(xl, tiny_studio, images, tmp_path, monkeypatch):
    from test_sheets import _tiny_ip_adapter

    from charstudio.sheets import ip_adapter

    red, _ = images

    def no_loading(*args, **kwargs):
        raise AssertionError("the adapter was loaded")

    for studio in (xl, tiny_studio):
        monkeypatch.setattr(studio.pipeline("txt2img"), "load_ip_adapter", no_loading)
    before = xl.components["unet"].attn_processors

    # tiny SD 1.x's adapter (its UNet attends to the 32-wide CLIP ViT-L stand-in SDXL also has)
    _tiny_ip_adapter(tiny_studio.components["unet"], tmp_path / "sd1")
    with pytest.raises(ModelLoadError) as err:
        xl.sheet("a knight", ["walking"], ip_adapter_weights=str(tmp_path / "sd1"), ip_adapter_image=red,
                 ip_adapter_subfolder="models", ip_adapter_weight_name="ip-adapter_tiny.safetensors", **FAST)
    message = str(err.value)
    assert "\n" not in message
    assert "is an SD 1.x IP-Adapter (its to_k_ip layers take 32-wide text features) and the model is SDXL" in message
    assert f"ip_adapter_weights={str(tmp_path / 'sd1')!r}" in message and PLUS in message  # what would work

    # Real widths: h94's SD 1.5 file (768) on SDXL, and its SDXL file (2048) on SD 1.x, by path.
    _real_width_adapter(tmp_path / "h94" / "models" / "ip-adapter_sd15.safetensors", 768)
    with pytest.raises(ModelLoadError, match=r"is an SD 1.x IP-Adapter \(.*768.*\) and the model is SDXL"):
        with ip_adapter(xl, str(tmp_path / "h94"), red, subfolder="models", weight_name="ip-adapter_sd15.safetensors"):
            pass
    sdxl_file = _real_width_adapter(tmp_path / "h94" / "sdxl_models" / PLUS, 2048)
    with pytest.raises(ModelLoadError, match=r"is an SDXL IP-Adapter \(.*2048.*\) and the model is SD 1.x .*"
                                             r"ip-adapter_sd15.safetensors"):
        with ip_adapter(tiny_studio, str(sdxl_file), red):
            pass
    # As wide as the UNet, but made for other layers: refused too.
    odd = _real_width_adapter(tmp_path / "odd" / "sdxl_models" / PLUS, xl.components["unet"].config.cross_attention_dim)
    with pytest.raises(ModelLoadError, match="for 2 cross-attention layers and this SDXL UNet has 12"):
        with ip_adapter(xl, str(odd), red):
            pass
    _assert_clean(xl, before)


def test_missing_files_name_the_family_defaults(xl, tmp_path, images):
    import re

    with pytest.raises(ModelLoadError, match=re.escape(f"not available: {tmp_path}/sdxl_models/{PLUS} (with its "
                                                       "image encoder models/image_encoder)")):
        xl.sheet("a knight", ["walking"], ip_adapter_weights=str(tmp_path), ip_adapter_image=images[0], **FAST)
    assert xl.components["unet"].encoder_hid_proj is None


def test_cli_sheet_on_sdxl_defaults_to_the_family_adapter(h94, images, tmp_path, capsys):
    from charstudio.cli import main

    images[0].save(tmp_path / "ref.png")
    assert main(["sheet", "a knight", "--model", "tiny-sdxl", "--poses", "walking", "--steps", "2", "--width", "64",
                 "--height", "64", "--seed", "1", "--device", "cpu", "--ip-adapter", str(h94),
                 "--ip-adapter-image", str(tmp_path / "ref.png"), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    settings = json.loads((tmp_path / "out" / "sheet.json").read_text())["settings"]
    assert (settings["ip_adapter_subfolder"], settings["ip_adapter_weight_name"]) == ("sdxl_models", PLUS)
