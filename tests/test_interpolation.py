"""Interpolation, blends, pose sequences, smoothness, outputs, and A1111 prompt syntax (tiny model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from charstudio import interpolation as ip
from charstudio import media
from charstudio.errors import ConfigError, OutputError
from charstudio.prompt_syntax import PromptScheduleCallback, parse_weighted, prompt_schedule
from helpers import pixels


pytestmark = pytest.mark.usefixtures("one_thread")

# (the watermark off: it hashes each recipe, and these tests compare pictures of different recipes,
# a frame's and an end's, or measure how evenly frames change)
FAST = dict(num_inference_steps=2, scheduler="ddim", watermark=False)


# -- slerp / lerp ----------------------------------------------------------------------------------
def test_slerp_and_lerp_reproduce_endpoints_exactly():
    a, b = ip.seed_noise(1, (1, 4, 16, 16)), ip.seed_noise(2, (1, 4, 16, 16))
    for fn in (ip.slerp, ip.lerp):
        assert torch.equal(fn(a, b, 0.0), a)
        assert torch.equal(fn(a, b, 1.0), b)
        assert not torch.equal(fn(a, b, 0.5), a)
    e1, e2 = torch.randn(1, 77, 32), torch.randn(1, 77, 32)
    p1, p2 = torch.randn(1, 32), torch.randn(1, 32)  # pooled
    for method in ("slerp", "lerp"):
        for x, y in ((e1, e2), (p1, p2)):
            assert torch.equal(ip.blend_embeddings(x, y, 0, method), x)
            assert torch.equal(ip.blend_embeddings(x, y, 1, method), y)
            assert ip.blend_embeddings(x, y, 0.5, method).shape == x.shape
    with pytest.raises(ConfigError, match="chunks"):
        ip.blend_embeddings(e1, torch.randn(1, 154, 32), 0.5)


def test_slerp_keeps_the_norm_of_gaussian_noise_and_lerp_does_not():
    a, b = ip.seed_noise(3, (1, 4, 64, 64)), ip.seed_noise(4, (1, 4, 64, 64))
    expected = math.sqrt(a.numel())
    for t in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(ip.slerp(a, b, t).norm().item() / expected - 1) < 0.02
    # Independent Gaussians are near-orthogonal: their midpoint chord is ~1/sqrt(2) as long.
    assert ip.lerp(a, b, 0.5).norm().item() / expected < 0.75


def test_slerp_per_token_and_parallel_fallback():
    a = torch.randn(2, 5, 8)
    b = torch.randn(2, 5, 8) * 3
    mid = ip.slerp(a, b, 0.5, dim=-1)
    want = 0.5 * (a.norm(dim=-1) + b.norm(dim=-1))  # per-token magnitudes interpolate linearly
    assert torch.allclose(mid.norm(dim=-1), want, rtol=1e-5)
    near = a * (1 + 1e-9)  # nearly parallel: no division by ~0, same result as lerp
    out = ip.slerp(a, near, 0.3, dim=-1)
    assert torch.isfinite(out).all() and torch.allclose(out, ip.lerp(a, near, 0.3), atol=1e-6)


def test_bad_t_and_shapes_are_clear_errors():
    a = torch.zeros(3)
    with pytest.raises(ConfigError, match="t=1.5"):
        ip.slerp(a, a, 1.5)
    with pytest.raises(ConfigError, match="same shape"):
        ip.lerp(a, torch.zeros(4), 0.5)
    with pytest.raises(ConfigError, match="frames"):
        ip.frame_ts(1)


# -- blends ---------------------------------------------------------------------------------------------
def test_weight_zero_component_equals_the_single_embedding():
    e1, e2, e3 = torch.randn(1, 77, 32), torch.randn(1, 77, 32), torch.randn(1, 77, 32)
    assert torch.equal(ip.mix_embeddings([e1, e2, e3], [0.7, 0, 0]), e1)
    mixed = ip.mix_embeddings([e1, e2], [3, 1])
    assert torch.allclose(mixed, 0.75 * e1 + 0.25 * e2)


@pytest.mark.parametrize("weights", [[0, 0], [-1, 2], [0.0, -0.5]])
def test_zero_or_negative_weights_are_rejected(weights):
    with pytest.raises(ConfigError, match="weights"):
        ip.mix_embeddings([torch.zeros(2), torch.ones(2)], weights)


def test_style_mix_with_weight_zero_equals_the_single_style(tiny_studio):
    from charstudio.character import load_styles

    s1, s2 = list(load_styles())[:2]
    single = tiny_studio.generate("a knight", style=s1, seed=3, **FAST)
    mixed = tiny_studio.mix_styles("a knight", {s1: 1.0, s2: 0.0}, seed=3, **FAST)
    assert mixed.weights == {s1: 1.0, s2: 0.0}
    assert np.array_equal(pixels(mixed.images[0]), pixels(single.image))
    half = tiny_studio.mix_styles("a knight", {s1: 0.5, s2: 0.5}, seed=3, **FAST)
    assert not np.array_equal(pixels(half.images[0]), pixels(single.image))
    with pytest.raises(ConfigError, match="styles"):
        tiny_studio.mix_styles("a knight", {s1: 0, s2: 0}, seed=3, **FAST)
    with pytest.raises(ConfigError, match="styles"):
        tiny_studio.mix_styles("a knight", {s1: -1, s2: 0.5}, seed=3, **FAST)


# -- design interpolation with the Studio ---------------------------------------------------------
def test_studio_interpolation_endpoints_and_recipes(tiny_studio, tmp_path):
    a = tiny_studio.generate("a red cat", seed=1, **FAST)
    b = tiny_studio.generate("a blue dog", seed=2, **FAST)
    result = tiny_studio.interpolate(a, b, frames=3)
    assert len(result.frames) == len(result.recipes) == 3 and result.ts == [0, 0.5, 1]
    assert np.array_equal(pixels(result.frames[0]), pixels(a.image))
    assert np.array_equal(pixels(result.frames[-1]), pixels(b.image))
    assert not np.array_equal(pixels(result.frames[1]), pixels(a.image))
    # A frame's recipe survives the PNG round trip and rebuilds the frame.
    paths = result.save(tmp_path)
    assert len(paths) == 3 and (tmp_path / "frames.json").exists()
    with pytest.raises(OutputError):
        result.save(tmp_path)
    recipe = ip.load_frame_recipe(paths[1])
    assert recipe.t == 0.5 and recipe.a == result.recipes[1].a
    assert np.array_equal(pixels(ip.run_frame(tiny_studio, recipe)), pixels(result.frames[1]))
    s = result.smoothness
    assert len(s.distances) == 2 and s.max >= s.mean > 0 and 0 < s.evenness <= 1


def test_sdxl_interpolation_blends_pooled_embeddings_and_its_ends_are_the_ends_own_pictures(tiny_sdxl_studio):
    xl = tiny_sdxl_studio
    a = xl.make_config("a girl with red hair", seed=3, num_inference_steps=2, width=64, height=64, watermark=False)
    b = xl.make_config("a boy with blue hair", seed=4, num_inference_steps=2, width=64, height=64, watermark=False)
    seen = []  # the pooled embedding (the UNet's text_embeds) of the prompt row of every UNet call

    def spy(module, args, kwargs):
        seen.append(kwargs["added_cond_kwargs"]["text_embeds"][-1].detach().clone())

    hook = xl.components["unet"].register_forward_pre_hook(spy, with_kwargs=True)
    try:
        frames = xl.interpolate(a, b, frames=3)
    finally:
        hook.remove()
    assert np.array_equal(np.asarray(frames.frames[0]), np.asarray(xl.run(a).image))
    assert np.array_equal(np.asarray(frames.frames[-1]), np.asarray(xl.run(b).image))
    middle = np.asarray(frames.frames[1], dtype=float)
    assert not np.array_equal(middle, np.asarray(frames.frames[0])) and not np.array_equal(middle, frames.frames[2])
    # the pooled embedding is blended too: halfway the UNet gets the spherical midpoint of the ends'
    # pooled vectors (their directions' bisector at their mean length), far from either end's
    from charstudio.interpolation import encode_to_one_length

    ends = encode_to_one_length(xl.encoder, [(a.prompt, ""), (b.prompt, "")], None)
    pa, pb = (e.pooled_prompt_embeds[0].double() for e in ends)
    mid = (pa / pa.norm() + pb / pb.norm())
    mid = (mid / mid.norm() * (pa.norm() + pb.norm()) / 2).float()
    assert (pa - pb).norm() > 0.5 * pa.norm()  # the two prompts' pooled vectors are far apart
    for target in (pa.float(), pb.float(), mid):
        closest = min(float((x - target).norm()) for x in seen)
        assert closest < 1e-4 * float(target.norm()), (closest, float(target.norm()))
    assert len(seen) == 3 * 2  # three frames of two steps, the middle one conditioned on the midpoint
    enc_a, enc_b = encode_to_one_length(xl.encoder, [(a.prompt, ""), ("a boy with blue hair, " * 8, "")], None)
    assert enc_a.pooled_prompt_embeds is not None and enc_a.prompt_embeds.shape == enc_b.prompt_embeds.shape
    assert enc_a.num_chunks == 2  # padded to the longer prompt's chunks, so the two blend
    assert not enc_a.negative_prompt_embeds.any()  # an empty negative stays zeros, as in a plain run


def test_a_style_mix_reruns_bit_identically(family_studio):
    from charstudio import Result

    mixed = family_studio.mix_styles("a girl", {"watercolor": 0.5, "cel-anime": 0.5}, seed=2, num_inference_steps=2,
                                     width=64, height=64)
    recipe = mixed.recipe
    assert len(recipe.style_mix) == 2
    again = family_studio.run(Result([mixed.images[0]], [recipe]).recipe)
    assert np.array_equal(np.asarray(again.image), np.asarray(mixed.images[0]))
    single = family_studio.generate("a girl", style="watercolor", seed=2, num_inference_steps=2, width=64, height=64)
    assert not np.array_equal(np.asarray(single.image), np.asarray(mixed.images[0]))


def test_interpolation_bad_input(tiny_studio):
    a = tiny_studio.make_config("a red cat", seed=1, **FAST)
    with pytest.raises(ConfigError, match="frames"):
        tiny_studio.interpolate(a, a.replace(seed=2), frames=1)
    with pytest.raises(ConfigError, match="size"):
        tiny_studio.interpolate(a, a.replace(width=a.width + 8), frames=3)
    with pytest.raises(ConfigError, match="model"):
        tiny_studio.interpolate(a, a.replace(model="sd15"), frames=3)
    with pytest.raises(ConfigError, match="method"):
        tiny_studio.interpolate(a, a.replace(seed=2), frames=3, method="cubic")


# -- smoothness and re-spacing --------------------------------------------------------------------------
def test_gini_and_smoothness_on_known_frames():
    assert ip.gini([1, 1, 1, 1]) == 0.0
    assert ip.gini([0, 0, 0, 1]) == pytest.approx(0.75)
    even = [np.full((4, 4, 3), v) for v in (0.0, 0.25, 0.5, 0.75)]
    s = ip.smoothness(even)
    assert s.distances == pytest.approx([0.25] * 3) and s.evenness == pytest.approx(1.0)
    uneven = [np.full((4, 4, 3), v) for v in (0.0, 0.05, 0.1, 0.9)]
    su = ip.smoothness(uneven)
    assert su.max == pytest.approx(0.8) and su.evenness < 0.6
    with pytest.raises(ConfigError, match="frames"):
        ip.smoothness(even[:1])
    # A custom embedder decides the space.
    s2 = ip.smoothness(even, embedder=lambda fr: np.array([[f.mean() * 2] for f in fr]))
    assert s2.distances == pytest.approx([0.5] * 3)


def test_respacing_evens_out_a_path_that_moves_fast_at_one_end():
    calls = []

    def render(t):  # change concentrated near t=1
        calls.append(t)
        return np.full((4, 4, 3), t ** 4)

    res = ip.respace(render, frames=5)
    assert res.ts[0] == 0 and res.ts[-1] == 1 and res.ts == sorted(res.ts)
    assert res.before.evenness < 0.6
    assert res.after.evenness > 0.9 and res.after.evenness > res.before.evenness
    assert res.ts[2] > 0.7  # the middle frame moves towards the fast end
    assert len(set(round(c, 9) for c in calls)) == len(calls) == res.renders  # cached, no re-renders


@pytest.mark.parametrize("seed", [1, 2])
def test_studio_uniform_interpolation_reports_before_and_after(tiny_studio, seed):
    """On tiny the even-t path is already nearly even (evenness 0.997 and 0.992 on seeds 1 and 2);
    re-spacing cuts what unevenness there is 26- and 52-fold (measured; 2.4- to 52-fold over seeds
    1-4): here at least 5-fold, by moving the middle frame off t=0.5."""
    res = tiny_studio.interpolate("a red cat", "a blue dog", frames=3, uniform=True, seed=seed, max_renders=5, **FAST)
    assert res.before is not None and res.before.evenness < 0.999
    assert 1 - res.smoothness.evenness <= (1 - res.before.evenness) / 5, (res.before.evenness, res.smoothness.evenness)
    assert abs(res.ts[1] - 0.5) > 0.001
    assert len(res.frames) == 3 and res.ts[0] == 0 and res.ts[-1] == 1 and res.renders <= 6


# -- poses -------------------------------------------------------------------------------------------------
def test_pose_sequence_middle_keypoints_lie_between_the_endpoints():
    from charstudio.pose import Pose, load_pose

    a, b = load_pose("running"), load_pose("jumping")
    seq = ip.pose_sequence(a, b, 5)
    assert len(seq) == 5 and all(isinstance(p, Pose) for p in seq)
    b_fit = b.fit(a.canvas_width, a.canvas_height)
    assert seq[0].isclose(a) and seq[-1].isclose(b_fit)
    both = (a.body[:, 2] > 0) & (b_fit.body[:, 2] > 0)
    assert both.sum() >= 10
    mid = seq[2].body[both, :2]
    lo = np.minimum(a.body[both, :2], b_fit.body[both, :2])
    hi = np.maximum(a.body[both, :2], b_fit.body[both, :2])
    assert np.all(mid >= lo - 1e-6) and np.all(mid <= hi + 1e-6)
    assert np.allclose(mid, (a.body[both, :2] + b_fit.body[both, :2]) / 2, atol=1e-6)


def test_keypoint_missing_in_one_pose_stays_put_and_switches_at_the_midpoint():
    a = np.array([[10.0, 10.0, 1.0], [20.0, 20.0, 1.0], [0.0, 0.0, 0.0]])
    b = np.array([[30.0, 50.0, 1.0], [0.0, 0.0, 0.0], [5.0, 5.0, 1.0]])
    seq = ip.pose_sequence(a, b, 5)  # t = 0, .25, .5, .75, 1
    assert np.allclose(seq[1][0], [15.0, 20.0, 1.0])
    assert np.allclose(seq[1][1], [20.0, 20.0, 1.0]) and np.allclose(seq[3][1], 0)  # vanishes at t >= 0.5
    assert np.allclose(seq[1][2], 0) and np.allclose(seq[2][2], [5.0, 5.0, 1.0])  # appears at t = 0.5


def test_pose_animation_keeps_the_seed_and_changes_the_pose(tiny_studio):
    res = tiny_studio.pose_animation("a knight", "running", "jumping", frames=3, seed=9, **FAST)
    assert len(res.images) == 3 and {r.seed for r in res.recipes} == {9}
    assert res.recipes[0].pose != res.recipes[1].pose
    again = tiny_studio.run(res.recipes[1])
    # The frames were drawn in one UNet batch: alone, within one level (batched kernels' rounding).
    assert np.abs(pixels(again.image) - pixels(res.images[1])).max() <= 1


# -- outputs -------------------------------------------------------------------------------------------------
def test_gif_mp4_grid_and_contact_sheet(tmp_path):
    import imageio.v3 as iio

    frames = [np.full((32, 48, 3), v, dtype=np.uint8) for v in (0, 80, 160, 240)]
    gif = media.save_gif(frames, tmp_path / "a.gif", fps=5)
    assert iio.imread(gif, index=None).shape[0] == 4
    with pytest.raises(OutputError, match="exists"):
        media.save_gif(frames, tmp_path / "a.gif")
    mp4 = media.save_mp4(frames, tmp_path / "a.mp4", fps=5)
    import imageio.v2 as imageio

    reader = imageio.get_reader(mp4, format="FFMPEG")
    try:
        assert reader.count_frames() == 4 and reader.get_data(0).shape[:2] == (32, 48)
    finally:
        reader.close()
    sheet = media.contact_sheet(frames, [0, 0.1, 0.5, 1], cols=2)
    assert sheet.size[0] > 2 * 48 and sheet.size[1] > 2 * 32
    assert media.frame_grid(frames, cols=4).size[1] < sheet.size[1]  # labels take room
    with pytest.raises(ConfigError, match="ts"):
        media.contact_sheet(frames, [0, 1])
    with pytest.raises(ConfigError, match="frames"):
        media.save_gif(frames[:1], tmp_path / "b.gif")
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


# -- prompt syntax -------------------------------------------------------------------------------------------
def test_a1111_weights_parse():
    assert parse_weighted("a (red:1.3) cat") == [("a ", 1.0), ("red", 1.3), (" cat", 1.0)]
    pieces = dict((t, w) for t, w in parse_weighted("((big)) [small] \\(x\\)"))
    assert pieces["big"] == pytest.approx(1.21) and pieces["small"] == pytest.approx(1 / 1.1)
    assert "".join(t for t, _ in parse_weighted("((big)) [small] \\(x\\)")) == "big small (x)"
    assert parse_weighted("[a:b] c") == [("[a:b] c", 1.0)]  # not editing: literal


def test_prompt_editing_schedule():
    assert prompt_schedule("[cat:dog:0.5] hat", 4) == [(2, "cat hat"), (4, "dog hat")]
    assert prompt_schedule("[cat::3] hat", 4) == [(3, "cat hat"), (4, " hat")]
    assert prompt_schedule("[cat|dog]", 3) == [(1, "cat"), (2, "dog"), (3, "cat")]
    assert prompt_schedule("plain", 5) == [(5, "plain")]
    assert parse_weighted("[cat:dog:0.5] hat") == [("cat hat", 1.0)]  # the prompt as it starts


def test_prompt_weights_and_editing_change_generation(tiny_studio):
    enc = tiny_studio.encoder
    plain = enc.encode("a red cat").prompt_embeds
    assert torch.equal(enc.encode("a (red:1.0) cat").prompt_embeds, plain)
    assert not torch.allclose(enc.encode("a (red:1.5) cat").prompt_embeds, plain)
    base = tiny_studio.generate("red cat", seed=4, num_inference_steps=3, scheduler="ddim", watermark=False)
    never = tiny_studio.generate("[red cat:blue dog:9]", seed=4, num_inference_steps=3, scheduler="ddim",
                                 watermark=False)
    late = tiny_studio.generate("[red cat:blue dog:2]", seed=4, num_inference_steps=3, scheduler="ddim")
    assert np.array_equal(pixels(never.image), pixels(base.image))
    assert not np.array_equal(pixels(late.image), pixels(base.image))


def test_schedule_callback_replaces_only_the_positive_half():
    new = torch.ones(1, 77, 4)
    cb = PromptScheduleCallback([(1, "a"), (3, "b")], [torch.zeros(1, 77, 4), new])
    current = torch.full((2, 77, 4), 5.0)
    out = cb(None, 0, 999, {"prompt_embeds": current})["prompt_embeds"]
    assert torch.equal(out[0], current[0]) and torch.equal(out[1], new[0])
    assert cb(None, 1, 500, {"prompt_embeds": current}) == {}  # no change between steps 1 and 2


def test_pose_animation_reference_attention_keeps_the_first_frame(tiny_studio):
    # One frame a call, so both runs draw each frame with the same kernels: exact comparisons.
    tiny_studio.max_batch = 1
    try:
        plain = tiny_studio.pose_animation("a knight", "running", "jumping", frames=2, seed=9, **FAST)
        ref = tiny_studio.pose_animation("a knight", "running", "jumping", frames=2, seed=9, reference_strength=1.0,
                                         **FAST)
    finally:
        tiny_studio.max_batch = 8
    assert np.array_equal(pixels(ref.images[0]), pixels(plain.images[0]))  # the anchor frame itself
    assert not np.array_equal(pixels(ref.images[1]), pixels(plain.images[1]))
    assert ref.extras["ts"] == [0.0, 1.0]


def test_smoothness_with_a_clip_vision_embedder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, projection_dim=8)).eval()
    embed = ip.clip_image_embedder(model)
    rng = np.random.default_rng(0)
    frames = [rng.random((40, 40, 3)) for _ in range(4)]
    vecs = embed(frames)
    assert vecs.shape == (4, 8) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    s = ip.smoothness(frames, embedder=embed)
    assert s.space == "clip" and len(s.distances) == 3 and all(d > 0 for d in s.distances)
    same = ip.smoothness([frames[0]] * 3, embedder=embed)
    assert same.max == pytest.approx(0, abs=1e-6) and same.evenness == 1.0
