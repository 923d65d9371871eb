"""An IP-Adapter reference per region (issue 37, item 3): the recipe field, its tokens acting only
inside the region's box on both families, the whole-picture region matching the global adapter,
clean-up after errors and re-runs from the recorded recipe."""

from __future__ import annotations

import numpy as np
import pytest

from charstudio.errors import ConfigError, InputFileError
from charstudio.recipe.config import GenerationConfig
from helpers import family_ip_adapter, pixels

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*gives poor pictures:UserWarning")]  # 64 px on tiny-sdxl

SETTINGS = dict(seed=1, num_inference_steps=3, width=64, height=64)
PROMPT = "a girl with red hair"


@pytest.fixture(scope="module")
def red(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("ref") / "red.png"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(path)
    return path


@pytest.fixture(scope="session")
def h94(family, family_studio, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"regip_{family.name}")
    family_ip_adapter(family, family_studio.components["unet"], folder)
    return folder


def region(box, red=None, folder=None, **kw):
    out = {"prompt": PROMPT, "box": box, **kw}
    if red is not None:
        out.update(reference=str(red), reference_scale=1.0, ip_adapter=str(folder))
    return out


def _clean(studio, processors):
    unet = studio.components["unet"]
    assert unet.encoder_hid_proj is None and unet.attn_processors == processors
    assert studio.pipeline("txt2img").image_encoder is None
    assert sum(len(m._forward_pre_hooks) for m in [unet]) == 0


def test_the_reference_is_recorded_with_its_digest_and_checked(red, tmp_path):
    from charstudio.workflows.masks import picture_sha256

    config = GenerationConfig(prompt="two", width=128, height=64,
                              regions=[{"prompt": "a girl", "box": "left", "reference": str(red)},
                                       {"prompt": "a boy", "box": "right"}])
    from PIL import Image

    first = config.regions[0]
    assert first["reference"] == {"path": str(red.resolve()), "sha256": picture_sha256(Image.open(red))}
    assert first["reference_scale"] == 0.6 and "reference" not in config.regions[1]
    assert GenerationConfig.from_dict(config.to_dict()).regions == config.regions  # the PNG's recipe reads back
    for spec, field in (({"reference_scale": 0.5}, "regions[0].reference_scale"),
                        ({"reference": str(tmp_path / "none.png")}, "regions[0].reference"),
                        ({"reference": 3}, "regions[0].reference"),
                        ({"reference": str(red), "reference_scale": 5}, "regions[0].reference_scale")):
        with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
            GenerationConfig(prompt="two", regions=[{"prompt": "a girl", "box": "left", **spec}])
    with pytest.raises(ConfigError, match=r"regions\[0\].ip_adapter.*one IP-Adapter"):
        GenerationConfig(prompt="two", regions=[{"prompt": "a", "box": "left", "reference": str(red), "ip_adapter": "x"},
                                                {"prompt": "b", "box": "right", "reference": str(red),
                                                 "ip_adapter": "y"}])


def _first_cross_attention(studio, regions):
    """The first cross-attention layer's output at the first UNet call, as (rows, h, w, channels)."""
    unet = studio.components["unet"]
    layer = next(m for name, m in unet.named_modules() if name.endswith("attn2"))
    seen = []
    handle = layer.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        result = studio.generate("a scene", regions=regions, **SETTINGS)
    finally:
        handle.remove()
    out = seen[0]
    side = int(round(out.shape[1] ** 0.5))
    return out.reshape(out.shape[0], side, side, -1), result


def test_a_regions_reference_acts_only_inside_its_box(family, family_studio, h94, red):
    """At the first cross-attention layer (the first the image tokens reach), the reference changes the
    left box and leaves the right half exactly as without it (1e-5); the pictures differ in the box.
    (Through the later self-attention and convolutions of the random tiny UNets the change spreads to
    the whole picture: on tiny SD 1.x a box over the left 24 columns moves the far right by ~20 levels
    on average, so the pixels outside are not asserted here; README gives mini's figures.)"""
    studio = family_studio
    plain, plain_result = _first_cross_attention(studio, [region("left")])
    ref, ref_result = _first_cross_attention(studio, [region("left", red, h94)])
    half = plain.shape[2] // 2
    assert float((ref[:, :, half:] - plain[:, :, half:]).abs().max()) <= 1e-5  # outside the box: untouched
    assert float((ref[:, :, :half] - plain[:, :, :half]).abs().mean()) > 1e-3  # inside: the reference acts
    inside = np.abs(pixels(ref_result.image) - pixels(plain_result.image))[:, :32]
    assert inside.mean() > 1


def test_a_whole_picture_region_matches_the_global_ip_adapter(family, family_studio, h94, red):
    """The region's prompt = the scene's and its box the whole picture: the picture is the global
    IP-Adapter's at the same scale, to rounding (measured: 2 levels on both families), where the
    adapter itself moves it by 17-25 levels on average."""
    from PIL import Image

    from charstudio.sheets import ip_adapter

    studio = family_studio
    before = studio.components["unet"].attn_processors
    regional = studio.generate(PROMPT, regions=[region([0, 0, 64, 64], red, h94)], **SETTINGS)
    with ip_adapter(studio, str(h94), Image.open(red), 1.0):
        everywhere = studio.generate(PROMPT, **SETTINGS)
    plain = studio.generate(PROMPT, **SETTINGS)
    assert np.abs(pixels(regional.image) - pixels(everywhere.image)).max() <= 4
    assert np.abs(pixels(everywhere.image) - pixels(plain.image)).mean() > 5
    _clean(studio, before)


def test_clean_up_after_errors_and_re_runs_from_the_recipe(tiny_studio, tmp_path, red):
    from PIL import Image

    from helpers import TinyFamily

    studio = tiny_studio
    folder = tmp_path / "h94"
    family_ip_adapter(TinyFamily("sd1"), studio.components["unet"], folder)
    before = studio.components["unet"].attn_processors
    plain = studio.generate("a red fox", **SETTINGS)
    # no IP-Adapter there for this model: refused under the region's field, nothing left loaded
    with pytest.raises(ConfigError, match=r"regions\[0\].reference=.*an IP-Adapter for this model"):
        studio.generate("a red fox", regions=[region("left", red, tmp_path / "empty")], **SETTINGS)
    _clean(studio, before)

    def boom(pipe, step, timestep, kwargs):
        if step == 1:
            raise RuntimeError("stop here")
        return {}

    two = [region("left", red, folder), {"prompt": "a boy", "box": "right"}]
    with pytest.raises(RuntimeError, match="stop here"):
        studio.generate("a red fox", regions=two, callbacks=[boom], **SETTINGS)
    _clean(studio, before)
    assert np.array_equal(pixels(studio.generate("a red fox", **SETTINGS).image), pixels(plain.image))
    # a batch of two seeds draws what each seed draws alone
    configs = [studio.make_config("a red fox", regions=two, **{**SETTINGS, "seed": s}) for s in (1, 2)]
    batch = studio.run_batch(configs)
    for got, config in zip(batch.images, configs):
        assert np.abs(pixels(got) - pixels(studio.run(config).image)).max() <= 2
    # the recorded recipe draws the same picture again; another picture under the name is refused
    drawn = studio.generate("a red fox", regions=two, **SETTINGS)
    again = studio.run(GenerationConfig.from_dict(drawn.recipe.to_dict()))
    assert np.array_equal(pixels(again.image), pixels(drawn.image))
    copy = tmp_path / "ref.png"
    Image.open(red).save(copy)
    moved = studio.make_config("a red fox", regions=[region("left", copy, folder)], **SETTINGS)
    Image.new("RGB", (64, 64), (0, 0, 255)).save(copy)
    with pytest.raises(InputFileError, match=r"regions\[0\].reference.sha256=.*not the picture"):
        studio.run(moved)
    _clean(studio, before)
