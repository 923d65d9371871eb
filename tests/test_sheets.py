"""Consistency mechanisms: reference attention, the CLIP score, photo -> character (IP-Adapters:
tests/test_ip_adapter.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from charstudio.sheets import reference_attention, score
from charstudio.errors import ConfigError, ModelLoadError
from charstudio.pose import load_pose
from helpers import Detector, paint_pose
from helpers import pixels as px

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only slow them down

FAST = dict(num_inference_steps=2, width=32, height=32)
POSES = ["standing_front", "walking", "jumping"]


@pytest.fixture(scope="module")
def tiny_embedder():
    """A randomly initialised CLIP vision tower with projection, built in code."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4, projection_dim=16)
    return CLIPVisionModelWithProjection(config).eval()


def test_reference_strength_zero_equals_the_plain_run(tiny_studio):
    unet = tiny_studio.components["unet"]
    before = dict(unet.attn_processors)
    plain_anchor = tiny_studio.generate("a knight", seed=1, pose="standing_front", **FAST)
    plain = tiny_studio.generate("a knight", seed=2, pose="walking", **FAST)
    with reference_attention(unet, 0.0) as bank:
        bank.record()
        anchor = tiny_studio.generate("a knight", seed=1, pose="standing_front", **FAST)
        assert bank.recorded_steps == 2
        bank.read()
        shared = tiny_studio.generate("a knight", seed=2, pose="walking", **FAST)
    assert (px(anchor.image) == px(plain_anchor.image)).all()
    assert (px(shared.image) == px(plain.image)).all()
    assert unet.attn_processors == before  # processors restored


@pytest.fixture(scope="module")
def plain_sheet(tiny_studio):
    """Two poses, different noise per pose, no reference attention: the baseline to compare with."""
    return tiny_studio.sheet("a knight", POSES[:2], seed=4, same_noise=False, reference_strength=0.0, **FAST)


def test_reference_attention_changes_only_the_non_anchor_images(tiny_studio, plain_sheet):
    # Different noise per pose: with the same noise the tiny model's anchor and target states
    # are almost equal, so attending to the anchor would change little.
    off = plain_sheet
    on = tiny_studio.sheet("a knight", POSES[:2], seed=4, same_noise=False, reference_strength=1.0, **FAST)
    # The anchor is drawn as before (the plain sheet batched both poses: within one level).
    assert np.abs(px(off.images[0]) - px(on.images[0])).max() <= 1
    for a, b in zip(off.images[1:], on.images[1:]):
        diff = np.abs(px(a) - px(b))
        assert diff.max() >= 2 and diff.mean() > 0.05
    assert on.settings["reference_strength"] == 1.0


def test_reference_processor_mixes_own_and_anchor_attention():
    """Unit check of the processor: at strength s the output is lerp(own, shared, s)."""
    import torch
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    x, ref = torch.randn(2, 10, 16), torch.randn(2, 10, 16) * 3

    class OneLayerUNet:  # reference_attention needs only attn_processors / set_attn_processor
        @property
        def attn_processors(self):
            return {"block.attn1.processor": attn.processor}

        def set_attn_processor(self, procs):
            attn.set_processor(procs["block.attn1.processor"])

    with torch.no_grad():
        plain = attn(x)
        outs = {}
        for s in (0.0, 0.5, 1.0):
            with reference_attention(OneLayerUNet(), s) as bank:
                bank.states = {"block.attn1.processor": [ref]}
                bank.read()
                outs[s] = attn(x)
        assert attn(x).equal(plain)  # the original processor is back
    assert torch.equal(outs[0.0], plain)
    assert not torch.allclose(outs[1.0], plain, atol=1e-3)
    assert torch.allclose(outs[0.5], (outs[0.0] + outs[1.0]) / 2, atol=1e-5)  # linear in s


def test_reference_image_as_anchor(tiny_studio, plain_sheet):
    from PIL import Image

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8))
    on = tiny_studio.sheet("a knight", POSES[:2], seed=4, same_noise=False, reference_strength=1.0,
                           reference_image=photo, **FAST)
    for a, b in zip(plain_sheet.images, on.images):  # every pose, including the first, now follows the photo
        assert (px(a) != px(b)).any()
    with pytest.raises(ConfigError, match="reference_strength=0"):
        tiny_studio.sheet("a knight", POSES[:2], reference_image=photo, **FAST)


def test_score_is_mean_pairwise_cosine(tiny_embedder, tiny_studio):
    # The arithmetic, with a callable embedder of known vectors: cosines 0, 1/sqrt2, 1/sqrt2.
    vectors = {0: [1.0, 0.0], 1: [0.0, 1.0], 2: [1.0, 1.0]}
    from PIL import Image

    images = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(3)]
    assert score(images, lambda ims: [vectors[im.getpixel((0, 0))[0]] for im in ims]) == pytest.approx(
        (0 + 2 / math.sqrt(2)) / 3, abs=1e-6)
    # With a CLIP vision model: identical images score 1, different ones less.
    sheet = tiny_studio.sheet("a knight", POSES[:2], seed=1, embedder=tiny_embedder, **FAST)
    assert sheet.score == pytest.approx(score(sheet.images, tiny_embedder))
    a = sheet.images[0]
    b = Image.fromarray(255 - px(a).astype(np.uint8))
    assert score([a, a, a], tiny_embedder) == pytest.approx(1.0, abs=1e-5)
    assert score([a, b], tiny_embedder) < 0.999
    with pytest.raises(ConfigError, match="at least two images"):
        score([a], tiny_embedder)


def test_a_missing_embedder_gives_a_clear_error(monkeypatch):
    """(A missing IP-Adapter's error: tests/test_ip_adapter.py, on both families.)"""
    from PIL import Image

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = Image.new("RGB", (64, 64))
    with pytest.raises(ModelLoadError, match="clip-vit-large-patch14.*not in the cache"):
        score([image, image])


def test_photo_to_character_with_its_pose(tiny_studio):
    """from_photo detects the photo's pose (here: read by the stand-in detector from dots painted
    into a wide photo) and records it: in the photo's pixels (x by its width, y by its height),
    the most confident person's, with the joints the detector did not find missing."""
    from charstudio.pose import Pose
    from PIL import Image

    rng = np.random.default_rng(1)
    photo, other = (Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(2))
    # Person 0: a few joints of one pose (listed first, less confident); person 1: another pose,
    # wide, without its left ankle (13) and left ear (17).
    photo, _ = paint_pose(photo, load_pose("standing_front").fit(64, 48), person=0, drop=tuple(range(5, 18)))
    photo, expected = paint_pose(photo, load_pose("reaching_up").fit(64, 48), person=1, drop=(13, 17))
    other, expected_other = paint_pose(other, load_pose("jumping").fit(64, 48), person=0)
    detector = Detector()
    res = tiny_studio.from_photo("aiko", photo, strength=0.5, detector=detector, seed=3, num_inference_steps=4)
    assert detector.seen == [(48, 64, 3)]  # the photo as rows x columns x RGB
    assert res.image.size == (64, 48) and res.extras["kind"] == "controlnet_img2img"
    recorded = Pose.from_dict(res.recipe.pose)
    assert recorded.isclose(expected, atol=1e-6)
    assert not recorded.present[13] and not recorded.present[17] and recorded.present.sum() == expected.present.sum()
    # Another photo, another pose: the recipe's pose is the photo's, and the photo is the starting
    # point (the tiny VAE cannot reconstruct it, so compare two photos).
    res_other = tiny_studio.from_photo("aiko", other, strength=0.5, detector=Detector(), seed=3, num_inference_steps=4)
    assert Pose.from_dict(res_other.recipe.pose).isclose(expected_other, atol=1e-6)
    assert not expected_other.isclose(expected, atol=1.0)
    assert (px(res.image) != px(res_other.image)).any()
    seen = []
    plain = tiny_studio.from_photo("aiko", photo, strength=0.5, pose=None, seed=3, num_inference_steps=4,
                                   progress=seen.append)
    assert plain.extras["kind"] == "img2img" and plain.recipe.pose is None
    # img2img at strength 0.5 runs 2 of the 4 steps, and the progress bar ends full.
    assert [(p.step, p.steps) for p in seen] == [(1, 2), (2, 2)] and seen[-1].fraction == 1.0
    with pytest.raises(ConfigError, match="strength=0"):
        tiny_studio.from_photo("aiko", photo, strength=0, pose=None)
    with pytest.raises(ConfigError, match="latents"):
        tiny_studio.run(plain.recipe, init_image=photo, latents=plain.extras["latents"][0])


def test_card_lora_is_used_unless_switched_off(fresh_studio, tmp_path):
    """(b): a card that names a LoRA draws its sheet with it; use_lora=False draws without."""
    import torch
    from peft import LoraConfig

    from charstudio.character import Character
    from charstudio.lora import save_lora
    from charstudio.models.tiny import build_tiny_components

    unet = build_tiny_components(0)["unet"]
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))  # random, non-zero update
    folder = save_lora(unet, None, tmp_path / "hero", "hero")["diffusers"].parent
    card = Character(name="hero", description="a knight", lora=str(folder))
    on = fresh_studio.sheet(card, ["walking"], seed=1, **FAST)
    off = fresh_studio.sheet(card, ["walking"], seed=1, use_lora=False, **FAST)
    assert on.recipes[0].loras == {"hero": 1.0} and on.settings["lora"] == str(folder)
    assert off.recipes[0].loras == {} and off.settings["lora"] is None
    assert np.abs(px(on.images[0]) - px(off.images[0])).mean() > 1


def test_sheet_score_never_downloads_an_embedder_it_was_not_asked_for(tiny_studio, monkeypatch):
    """Without HF_HUB_OFFLINE and without network, a sheet must not stall on download retries."""
    import socket

    from charstudio.sheets import load_embedder
    from charstudio.errors import ModelLoadError

    attempts = []

    def no_network(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled in this test")

    # huggingface_hub reads HF_HUB_OFFLINE once at import, so the flag itself is switched off too.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: no_network(None, host))  # DNS comes first
    with pytest.raises(ModelLoadError, match="not available locally"):
        load_embedder("someone/clip-not-cached-anywhere", download=False)
    sheet = tiny_studio.sheet("a knight", ["standing_front", "waving"], seed=1, num_inference_steps=1,
                              width=32, height=32)
    assert sheet.score is None and len(sheet.images) == 2
    assert attempts == []
