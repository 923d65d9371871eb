"""Feature caching (charstudio.speed.cache, issue 38 item 4): DeepCache's reuse of the UNet's deep
features between steps, installed per pipeline call by `charstudio.workflows.run.drawing_context`
when a recipe has ``feature_cache``."""

from __future__ import annotations

import numpy as np
import pytest

from charstudio.errors import ConfigError
from helpers import pixels

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(width=64, height=64, seed=3, watermark=False)


class DeepCalls:
    """Counts the deep layers' real work: calls of the middle block's first resnet (a cached step
    reuses the middle block's output without calling into it)."""

    def __init__(self, net):
        self.count = 0
        self.handle = net.mid_block.resnets[0].register_forward_pre_hook(self.seen)

    def seen(self, *args):
        self.count += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def untouched(net) -> bool:
    """No forward of ours left on any module, no hook left on the model."""
    return not any("forward" in m.__dict__ for m in net.modules()) and not net._forward_pre_hooks


def first_step_latents(into: list):
    def keep(pipe, step, t, kwargs):
        if step == 0:
            into.append(kwargs["latents"].clone())
        return {}
    return keep


def test_the_cache_runs_the_deep_layers_every_nth_step_of_each_call(tiny_studio):
    unet = tiny_studio.components["unet"]
    def run(**kw):
        return tiny_studio.run(tiny_studio.make_config("a knight", num_inference_steps=20, **FAST, **kw))
    with DeepCalls(unet) as deep:
        default = run()
        assert deep.count == 20
        again = run(feature_cache=1)  # interval 1 is no cache: the default's exact pixels
        assert again.recipe.feature_cache is None and np.array_equal(pixels(again.image), pixels(default.image))
        deep.count = 0
        cached = run(feature_cache=3)
        assert deep.count == 7  # steps 0, 3, ..., 18 in full
        assert cached.recipe.feature_cache == {"interval": 3, "branch": 0}
        assert not np.array_equal(pixels(cached.image), pixels(default.image))
        # The hires fix's img2img pass counts its own steps from a full one: 10 steps -> 0, 3, 6, 9.
        deep.count = 0
        run(feature_cache=3, hires={"scale": 2, "strength": 0.5, "steps": 10})
        assert deep.count == 7 + 4
    assert untouched(unet)


def test_a_branch_past_the_model_is_refused_with_its_range(tiny_studio):
    from charstudio.speed.cache import max_branch

    top = max_branch(tiny_studio.components["unet"])
    config = tiny_studio.make_config("a knight", num_inference_steps=2, feature_cache={"interval": 2, "branch": top + 1},
                                     **FAST)
    with pytest.raises(ConfigError, match=rf"feature_cache\.branch={top + 1} .*0 to {top} for this model"):
        tiny_studio.run(config)
    assert untouched(tiny_studio.components["unet"])


def test_an_error_mid_run_puts_the_unet_and_controlnet_back(tiny_studio):
    unet = tiny_studio.components["unet"]
    seen = []

    def fail(pipe, step, t, kwargs):
        seen.append("forward" in unet.mid_block.__dict__)  # the cache is in place while it runs
        if step == 4:
            raise RuntimeError("stop here")
        return {}

    config = tiny_studio.make_config("a knight", num_inference_steps=10, feature_cache=2, pose="standing_front", **FAST)
    with pytest.raises(RuntimeError, match="stop here"):
        tiny_studio.run(config, callbacks=[fail])
    assert seen == [True] * 5
    assert untouched(unet) and untouched(tiny_studio.components["controlnet"])
    plain = config.replace(feature_cache=None)
    assert np.array_equal(pixels(tiny_studio.run(plain).image), pixels(tiny_studio.run(plain).image))


def test_tiny_sdxl_with_a_pose_caches_the_unet_and_controlnet(tiny_sdxl_studio):
    studio = tiny_sdxl_studio
    def make(**kw):
        return studio.make_config("a knight", num_inference_steps=9, pose="standing_front",
                                  **dict(FAST, width=128, height=128), **kw)  # its trained size
    default = studio.run(make())
    controlnet = studio.components["controlnet"]
    with DeepCalls(studio.components["unet"]) as deep, DeepCalls(controlnet) as deep_control:
        cached = studio.run(make(feature_cache={"interval": 3, "branch": 1}))
    assert deep.count == deep_control.count == 3
    drift = np.abs(pixels(cached.image).astype(float) - pixels(default.image)).mean()
    assert 0 < drift < 40, drift
    assert untouched(studio.components["unet"]) and untouched(controlnet)


def test_regions_and_reference_attention_match_a_run_without_cache_on_full_steps(tiny_studio):
    from charstudio.sheets.reference import reference_attention

    regions = [{"prompt": "a girl with red hair", "box": "left"}, {"prompt": "a boy with blue hair", "box": "right"}]
    def make(**kw):
        return tiny_studio.make_config("two people", num_inference_steps=6, guidance_scale=7.0, regions=regions,
                                       **dict(FAST, width=128) | kw)
    with reference_attention(tiny_studio.components["unet"], 0.5) as bank:
        bank.record()
        tiny_studio.run(make(feature_cache=3))
        # Every layer, skipped or not, has one recorded input per step: later pictures read step by step.
        assert {len(states) for states in bank.states.values()} == {6} and len(bank.timesteps) == 6
        bank.read()
        firsts: list = []
        cached = tiny_studio.run(make(seed=4, feature_cache=3), callbacks=[first_step_latents(firsts)])
        plain = tiny_studio.run(make(seed=4), callbacks=[first_step_latents(firsts)])
    assert np.array_equal(firsts[0].numpy(), firsts[1].numpy())  # step 0 runs in full: the same latents
    assert not np.array_equal(pixels(cached.image), pixels(plain.image))
    assert untouched(tiny_studio.components["unet"])


def test_the_recipe_records_the_cache_and_its_png_redraws_the_same_pixels(tiny_studio, tmp_path):
    from charstudio.recipe.metadata import read_recipe

    result = tiny_studio.run(tiny_studio.make_config("a knight", num_inference_steps=8,
                                                     feature_cache={"interval": 4, "branch": 1}, **FAST))
    path = result.save(tmp_path)[0]
    _, recipe = read_recipe(path)
    assert recipe.feature_cache == {"interval": 4, "branch": 1}
    again = tiny_studio.run(recipe)
    assert np.array_equal(pixels(again.image), pixels(result.image))
    assert not np.array_equal(pixels(tiny_studio.run(recipe.replace(feature_cache=None)).image), pixels(result.image))


def test_mini_at_interval_3_stays_close_to_its_default_picture_and_keeps_the_hair_colour(mini_studio):
    from charstudio.mini.measure import HAIR_COLOURS, hair_region, nearest_colour, region_colour
    from charstudio.pose import load_pose

    pose = load_pose("standing_front")
    def make(seed, cache):
        return mini_studio.make_config("a girl with long red hair", pose=pose, seed=seed, num_inference_steps=20,
                                       feature_cache=cache, watermark=False)
    seeds = (1, 2, 3)
    default = mini_studio.run_batch([make(s, None) for s in seeds]).images
    cached = mini_studio.run_batch([make(s, 3) for s in seeds]).images  # a batch of 3 in one UNet call, with CFG
    drift = [np.abs(pixels(a).astype(float) - pixels(b)).mean() for a, b in zip(default, cached)]
    assert all(0 < d < 8 for d in drift), drift
    mask = hair_region(pose.fit(64, 64), 64)
    assert [nearest_colour(region_colour(im, mask), HAIR_COLOURS) for im in cached] == ["red"] * 3
    alone = mini_studio.run(make(seeds[1], 3)).image  # a batched picture is the one drawn alone
    assert np.abs(pixels(alone).astype(float) - pixels(cached[1])).max() <= 2
