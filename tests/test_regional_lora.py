"""A LoRA per region (issue 37, item 3): the recipe field, the masking on both families, batches,
clean-up, and the no-bleed measurement on mini with the shipped cape and boots LoRAs."""

from __future__ import annotations

import numpy as np
import pytest

from charstudio.errors import ConfigError
from charstudio.recipe.config import GenerationConfig
from helpers import TinyFamily, lora_model, pixels, save_lora_model

SETTINGS = dict(seed=1, num_inference_steps=4, width=64, height=64)  # small: the machine is shared


def recipe(**kw):
    return GenerationConfig(**{"prompt": "two people", "width": 128, "height": 64, **kw})


def test_region_loras_are_checked_and_recorded_as_given():
    config = recipe(regions=[{"prompt": "a girl", "box": "left", "loras": {" zorbi ": 0.8}},
                             {"prompt": "a boy", "box": "right"}])
    assert config.regions[0]["loras"] == {"zorbi": 0.8} and "loras" not in config.regions[1]
    assert config.loras == {}
    for loras, field in (("zorbi", "regions[0].loras"), ({"zorbi": "strong"}, "regions[0].loras['zorbi']"),
                         ({"": 1.0}, "regions[0].loras"), ({"zorbi": 11.0}, "regions[0].loras['zorbi']")):
        with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
            recipe(regions=[{"prompt": "a girl", "box": "left", "loras": loras}])
    with pytest.raises(ConfigError, match=r"regions\[0\].loras.*not both"):  # one adapter acts in one place
        recipe(loras={"zorbi": 1.0}, regions=[{"prompt": "a girl", "box": "left", "loras": {"zorbi": 1.0}}])
    with pytest.raises(ConfigError, match=r"regions\[0\].lora=.*'loras'"):
        recipe(regions=[{"prompt": "a girl", "box": "left", "lora": "zorbi"}])


def _unet_hooks(studio) -> int:
    return sum(len(m._forward_hooks) for m in studio.components["unet"].modules())


@pytest.fixture(scope="module")
def sd1_lora(tmp_path_factory):
    family = TinyFamily("sd1")
    return save_lora_model(family, lora_model(family), tmp_path_factory.mktemp("sd1"), "hero")["diffusers"]


@pytest.fixture(scope="module")
def sd1_studio():
    return TinyFamily("sd1").studio()


def test_a_region_over_the_whole_picture_draws_what_the_lora_draws_globally(sd1_studio, sd1_lora, one_thread):
    """A box over the whole picture leaves the mask at 1 in every layer and runs the cross-attention
    with the adapter (text encoder LoRA too): the picture is the global LoRA's, to rounding (measured
    2 levels), where the LoRA itself moves it by about 46."""
    studio, size = sd1_studio, 64
    whole = [{"prompt": "a girl with red hair", "box": [0, 0, size, size], "loras": {str(sd1_lora): 0.8}}]
    regional = studio.generate("a scene", regions=whole, **SETTINGS)
    assert regional.recipe.regions[0]["loras"] == {str(sd1_lora): 0.8} and regional.recipe.loras == {}
    assert studio.active_loras == {} and _unet_hooks(studio) == 0  # loaded off, hooks gone
    (name,) = studio.loaded_loras
    with studio.using_loras({name: 0.8}):
        everywhere = studio.generate("a girl with red hair", **SETTINGS)
    plain = studio.generate("a girl with red hair", **SETTINGS)
    assert np.abs(pixels(regional.image) - pixels(everywhere.image)).max() <= 4
    assert np.abs(pixels(everywhere.image) - pixels(plain.image)).max() > 20
    # re-run from the recipe: the same picture
    again = studio.run(regional.recipe)
    assert np.array_equal(pixels(again.image), pixels(regional.image))


def test_region_lora_restores_the_model_after_an_error_and_batches_match_single_runs(sd1_studio, sd1_lora, one_thread):
    studio = sd1_studio
    before = studio.generate("a red fox", **SETTINGS)
    two = [{"prompt": "a girl", "box": "left", "loras": {str(sd1_lora): 1.0}}, {"prompt": "a boy", "box": "right"}]

    def boom(pipe, step, timestep, kwargs):
        if step == 1:
            raise RuntimeError("stop here")
        return {}

    with pytest.raises(RuntimeError, match="stop here"):
        studio.generate("a red fox", regions=two, callbacks=[boom], **SETTINGS)
    assert _unet_hooks(studio) == 0 and studio.active_loras == {}
    assert np.array_equal(pixels(studio.generate("a red fox", **SETTINGS).image), pixels(before.image))
    # a batch of two seeds draws what each seed draws alone
    configs = [studio.make_config("a red fox", regions=two, **{**SETTINGS, "seed": s}) for s in (1, 2)]
    batch = studio.run_batch(configs)
    alone = [studio.run(c) for c in configs]
    for got, want in zip(batch.images, alone):
        assert np.abs(pixels(got) - pixels(want.image)).max() <= 2
    # the LoRA in the left region changes the picture (it is not silently dropped)
    without = studio.generate("a red fox", regions=[{k: v for k, v in two[0].items() if k != "loras"}, two[1]],
                              **SETTINGS)
    assert np.abs(pixels(without.image) - pixels(studio.generate("a red fox", regions=two, **SETTINGS).image)).max() > 10


def test_sdxl_region_lora_masks_the_unet_and_cleans_up(tmp_path, one_thread):
    family = TinyFamily("sdxl")
    path = save_lora_model(family, lora_model(family, text_encoders=False), tmp_path, "hero")["diffusers"]
    studio, size = family.studio(), 64
    prompt = "a girl with red hair"  # scene = region prompt: SDXL's pooled text is the scene's
    whole = [{"prompt": prompt, "box": [0, 0, size, size], "loras": {str(path): 1.0}}]
    regional = studio.generate(prompt, regions=whole, **SETTINGS)
    assert _unet_hooks(studio) == 0 and studio.active_loras == {}
    (name,) = studio.loaded_loras
    with studio.using_loras({name: 1.0}):
        everywhere = studio.generate(prompt, **SETTINGS)
    plain = studio.generate(prompt, **SETTINGS)
    assert np.abs(pixels(regional.image) - pixels(everywhere.image)).max() <= 4
    assert np.abs(pixels(everywhere.image) - pixels(plain.image)).max() > 10
    with pytest.raises(ConfigError, match=r"regions\[0\].loras"):
        studio.generate(prompt, regions=[{"prompt": prompt, "box": "left", "loras": {"no_such_lora": 1.0}}],
                        **SETTINGS)


def test_mini_cape_and_boots_stay_on_their_own_characters(mini_studio):
    """Issue 37's measurement: the cape LoRA (zorbi) in the left region, the boots LoRA (vimbo) in the
    right one, 10 seeds at 128x64, 20 steps. Each feature on its own character in >= 7 of 10 seeds and
    on the other in <= 1 (measured: cape 10/10 and boots 9/10 on their own, 0/10 and 0/10 on the
    other: 2 seeds or more above the bounds). Both LoRAs applied to the whole picture instead give
    cape 0/10, boots 2/10 (the two adapters' text-encoder layers fight): benchmarks/regional_lora.py."""
    from charstudio.mini.regional_check import measure

    before = dict(mini_studio.loaded_loras)
    try:
        got = measure(mini_studio, "regional", range(10))
        assert mini_studio.active_loras == {}
    finally:
        mini_studio.unload_loras([n for n in mini_studio.loaded_loras if n not in before])
    assert got["own"]["zorbi"] >= 0.7 and got["own"]["vimbo"] >= 0.7, got["own"]
    assert got["other"]["zorbi"] <= 0.1 and got["other"]["vimbo"] <= 0.1, got["other"]
