"""IP-Adapters on both families: the family's adapter (SD 1.x's plain one, SDXL's "plus" one, each
in h94/IP-Adapter's layout) found from the family's defaults, steering the picture through the
family's pipelines and sheets, unloaded afterwards, recorded in the sheet's settings; missing files
name the family's defaults; an adapter of the other family is refused before anything loads; SDXL
takes other files by name or by path. (Batches: tests/test_batch.py.)"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from charstudio.errors import ConfigError, ModelLoadError
from charstudio.models.family import IPAdapterFiles
from helpers import PLUS_SDXL as PLUS
from helpers import family_ip_adapter, real_width_adapter, tiny_ip_adapter, tiny_plus_ip_adapter
from helpers import pixels as px

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*gives poor pictures:UserWarning")]  # 64 px on tiny-sdxl

FAST = dict(num_inference_steps=2, width=64, height=64)


@pytest.fixture(scope="session")
def h94(family, family_studio, tmp_path_factory):
    """A local folder laid out like h94/IP-Adapter, holding the family's default files only."""
    folder = tmp_path_factory.mktemp(f"h94_{family.name}")
    family_ip_adapter(family, family_studio.components["unet"], folder)
    return folder


@pytest.fixture(scope="module")
def images():
    from PIL import Image

    return Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))


def _defaults(family, folder) -> IPAdapterFiles:
    """The files a Studio of ``family`` given just ``folder`` loads: the family's defaults, from there."""
    return dataclasses.replace(family.family.ip_adapter, repo=str(folder))


def _assert_clean(studio, processors) -> None:
    unet = studio.components["unet"]
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    assert unet.attn_processors == processors  # the very processor objects from before
    for kind in ("txt2img", "controlnet"):
        assert studio.pipeline(kind).image_encoder is None and studio.pipeline(kind).feature_extractor is None


def test_the_familys_adapter_steers_the_picture_and_is_unloaded(family, family_studio, h94, images):
    from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection

    from charstudio.sheets import ip_adapter

    studio = family_studio
    red, blue = images
    unet = studio.components["unet"]
    before = unet.attn_processors
    plain = studio.generate("a knight", seed=1, **FAST).image
    seen = []  # what the UNet receives, after the adapter's hook (hooks run in order)
    with ip_adapter(studio, str(h94), red, 1.0) as files:
        # A Studio given just the folder finds the family's files.
        assert files == _defaults(family, h94)
        projection = IPAdapterPlusImageProjection if family.is_sdxl else ImageProjection
        assert isinstance(unet.encoder_hid_proj.image_projection_layers[0], projection)
        spy = unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["added_cond_kwargs"]), with_kwargs=True)
        with_red = studio.generate("a knight", seed=1, **FAST).image
        spy.remove()
    with ip_adapter(studio, str(h94), blue, 1.0):
        with_blue = studio.generate("a knight", seed=1, **FAST).image
    after = studio.generate("a knight", seed=1, **FAST).image

    if family.is_sdxl:
        # SDXL's own added conditions are kept, and the "plus" adapter gets the image encoder's
        # penultimate hidden states (17 tokens x 32), [uncond, cond], which its resampler reads.
        assert set(seen[0]) == {"text_embeds", "time_ids", "image_embeds"}
        assert seen[0]["time_ids"].shape == (2, 6) and tuple(seen[0]["image_embeds"][0].shape) == (2, 1, 17, 32)
    else:
        # The plain adapter gets the image encoder's projected embedding (16 wide), [uncond, cond].
        assert set(seen[0]) == {"image_embeds"} and tuple(seen[0]["image_embeds"][0].shape) == (2, 1, 16)
    assert np.abs(px(with_red) - px(plain)).mean() > 1  # the adapter changes the picture
    assert np.abs(px(with_red) - px(with_blue)).mean() > 1  # and the reference image steers it
    assert (px(after) == px(plain)).all()  # unloaded on exit
    _assert_clean(studio, before)


def test_a_sheet_takes_the_familys_adapter_and_records_it(family, family_studio, h94, images):
    studio = family_studio
    red, blue = images
    before = studio.components["unet"].attn_processors
    plain = studio.sheet("a knight", ["walking"], seed=1, **FAST)
    sheets = {name: studio.sheet("a knight", ["walking"], seed=1, ip_adapter_weights=str(h94), ip_adapter_image=image,
                                 ip_adapter_scale=1.0, **FAST) for name, image in (("red", red), ("blue", blue))}
    sheet = sheets["red"]
    assert np.abs(px(sheet.images[0]) - px(plain.images[0])).mean() > 1  # through the family's ControlNet pipeline
    assert np.abs(px(sheet.images[0]) - px(sheets["blue"].images[0])).mean() > 1  # the reference image steers it
    defaults = _defaults(family, h94)
    assert {k: v for k, v in sheet.settings.items() if k.startswith("ip_adapter")} == {
        "ip_adapter": str(h94), "ip_adapter_scale": 1.0, "ip_adapter_subfolder": defaults.subfolder,
        "ip_adapter_weight_name": defaults.weight_name,
        "ip_adapter_image_encoder_folder": defaults.image_encoder_folder}
    # With reference attention on top (its processors wrap the adapter's, then give them back).
    both = studio.sheet("a knight", ["standing_front", "walking"], seed=1, reference_strength=0.5,
                        ip_adapter_weights=str(h94), ip_adapter_image=red, **FAST)
    assert len(both.images) == 2
    again = studio.sheet("a knight", ["walking"], seed=1, **FAST)
    assert (px(again.images[0]) == px(plain.images[0])).all()  # unloaded on exit
    _assert_clean(studio, before)


def test_other_files_by_name_or_by_path_on_sdxl(tiny_sdxl_studio, images, tmp_path):
    from charstudio.sheets import ip_adapter

    xl = tiny_sdxl_studio
    red, _ = images
    tiny_plus_ip_adapter(xl.components["unet"], tmp_path)  # the family's default files, as in h94
    other = tiny_plus_ip_adapter(xl.components["unet"], tmp_path, "my-adapter.safetensors", seed=5, encoder=False)
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


def test_wrong_family_adapter_is_refused_before_loading(tiny_sdxl_studio, tiny_studio, images, tmp_path, monkeypatch):
    from charstudio.sheets import ip_adapter

    xl = tiny_sdxl_studio
    red, _ = images

    def no_loading(*args, **kwargs):
        raise AssertionError("the adapter was loaded")

    for studio in (xl, tiny_studio):
        monkeypatch.setattr(studio.pipeline("txt2img"), "load_ip_adapter", no_loading)
    before = xl.components["unet"].attn_processors

    # tiny SD 1.x's adapter (its UNet attends to the 32-wide CLIP ViT-L stand-in SDXL also has)
    tiny_ip_adapter(tiny_studio.components["unet"], tmp_path / "sd1")
    with pytest.raises(ModelLoadError) as err:
        xl.sheet("a knight", ["walking"], ip_adapter_weights=str(tmp_path / "sd1"), ip_adapter_image=red,
                 ip_adapter_subfolder="models", ip_adapter_weight_name="ip-adapter_tiny.safetensors", **FAST)
    message = str(err.value)
    assert "\n" not in message
    assert "is an SD 1.x IP-Adapter (its to_k_ip layers take 32-wide text features) and the model is SDXL" in message
    assert f"ip_adapter_weights={str(tmp_path / 'sd1')!r}" in message and PLUS in message  # what would work

    # Real widths: h94's SD 1.5 file (768) on SDXL, and its SDXL file (2048) on SD 1.x, by path.
    real_width_adapter(tmp_path / "h94" / "models" / "ip-adapter_sd15.safetensors", 768)
    with pytest.raises(ModelLoadError, match=r"is an SD 1.x IP-Adapter \(.*768.*\) and the model is SDXL"):
        with ip_adapter(xl, str(tmp_path / "h94"), red, subfolder="models", weight_name="ip-adapter_sd15.safetensors"):
            pass
    sdxl_file = real_width_adapter(tmp_path / "h94" / "sdxl_models" / PLUS, 2048)
    with pytest.raises(ModelLoadError, match=r"is an SDXL IP-Adapter \(.*2048.*\) and the model is SD 1.x .*"
                                             r"ip-adapter_sd15.safetensors"):
        with ip_adapter(tiny_studio, str(sdxl_file), red):
            pass
    # As wide as the UNet, but made for other layers: refused too.
    odd = real_width_adapter(tmp_path / "odd" / "sdxl_models" / PLUS, xl.components["unet"].config.cross_attention_dim)
    with pytest.raises(ModelLoadError, match="for 2 cross-attention layers and this SDXL UNet has 12"):
        with ip_adapter(xl, str(odd), red):
            pass
    _assert_clean(xl, before)


def test_missing_files_name_the_familys_defaults(family, family_studio, tmp_path, images):
    import re

    studio = family_studio
    defaults = _defaults(family, tmp_path)
    with pytest.raises(ModelLoadError, match="IP-Adapter weights are not available: " + re.escape(
            f"{tmp_path}/{defaults.subfolder}/{defaults.weight_name} (with its image encoder "
            f"{defaults.image_encoder_folder})")):
        studio.sheet("a knight", ["walking"], ip_adapter_weights=str(tmp_path), ip_adapter_image=images[0], **FAST)
    assert studio.pipeline("txt2img").image_encoder is None
    assert studio.components["unet"].encoder_hid_proj is None  # no adapter half-installed
    # Nothing was left installed on the shared UNet.
    assert all(type(p).__name__ != "ReferenceAttnProcessor" for p in studio.components["unet"].attn_processors.values())


def test_cli_sheet_defaults_to_the_familys_adapter(family, h94, images, tmp_path, capsys):
    from charstudio.cli import main

    images[0].save(tmp_path / "ref.png")
    assert main(["sheet", "a knight", "--model", family.model, "--poses", "walking", "--steps", "2", "--width", "64",
                 "--height", "64", "--seed", "1", "--device", "cpu", "--ip-adapter", str(h94),
                 "--ip-adapter-image", str(tmp_path / "ref.png"), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    settings = json.loads((tmp_path / "out" / "sheet.json").read_text())["settings"]
    defaults = family.family.ip_adapter
    assert (settings["ip_adapter_subfolder"], settings["ip_adapter_weight_name"]) == (defaults.subfolder,
                                                                                        defaults.weight_name)
