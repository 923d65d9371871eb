"""The fast path (speed="max"): plans per device, pictures against the default path, recompiles
counted with torch._dynamo's counters, and the features that swap processors or weights (LoRA,
reference attention, tracing, embeddings, training's gradients) on a compiled studio.

torch.compile runs with backend "eager" here (dynamo traces and guards as on a GPU; the graphs
run as plain PyTorch), so what is tested is the tracing, guarding and recompiling, fast."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from charstudio.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only slow them down

FAST = dict(num_inference_steps=2, width=32, height=32)
# speed="max" on the CPU against the default path: fused QKV and channels_last change the order
# of float sums, nothing else, so pixels may differ by rounding only.
MAX_PIXEL_DIFF, MEAN_PIXEL_DIFF = 3, 0.05


def px(result) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB"), dtype=np.int16)


def unet_compiles(studio) -> int:
    from charstudio.models.speed import compile_stats

    return compile_stats(studio)["unet"]["compiles"]


# -- choosing: no model needed ----------------------------------------------------------------------------
def test_bad_speed_settings_are_refused_before_any_model_work(monkeypatch, tiny_studio):
    from charstudio import Studio

    with pytest.raises(ConfigError, match=r"speed='fast'.*default, max"):
        Studio.from_pretrained("no-such-model-anywhere", speed="fast")  # refused before the model is looked up
    with pytest.raises(ConfigError, match="compile_backend='nope'"):
        tiny_studio.set_speed("max", compile_backend="nope")
    with pytest.raises(ConfigError, match="compile_mode='turbo'"):
        tiny_studio.set_speed("max", compile_mode="turbo")
    with pytest.raises(ConfigError, match="max_compiles=0"):
        tiny_studio.set_speed("max", max_compiles=0)
    monkeypatch.setenv("CHARSTUDIO_COMPILE_BACKEND", "nope")
    with pytest.raises(ConfigError, match="CHARSTUDIO_COMPILE_BACKEND='nope'"):
        tiny_studio.set_speed("max")
    assert tiny_studio.speed == "default"
    assert not hasattr(tiny_studio.components["unet"], "_charstudio_speed")  # refused before anything changed


def test_what_max_does_on_each_device(monkeypatch):
    from charstudio.models.speed import plan_speed

    monkeypatch.delenv("CHARSTUDIO_COMPILE_BACKEND", raising=False)
    monkeypatch.delenv("CHARSTUDIO_COMPILE_MODE", raising=False)
    cpu = plan_speed("max", "cpu")
    assert (cpu.fused_qkv, cpu.channels_last, cpu.compile_backend) == (True, False, None)
    assert "channels_last skipped on cpu" in cpu.describe() and "torch.compile skipped on cpu" in cpu.describe()
    cuda = plan_speed("max", "cuda")
    assert (cuda.fused_qkv, cuda.channels_last, cuda.compile_backend, cuda.notes) == (True, True, "inductor", ())
    graphs = plan_speed("max", "cuda:0", compile_mode="reduce-overhead")
    assert graphs.compile_mode == "reduce-overhead"
    assert plan_speed("max", "cpu", compile_backend="inductor", compile_mode="reduce-overhead").compile_mode is None
    offload = plan_speed("max", "cuda", low_vram=True)
    assert offload.compile_backend is None and "low-VRAM" in offload.describe()
    monkeypatch.setenv("CHARSTUDIO_COMPILE_BACKEND", "aot_eager")
    assert plan_speed("max", "cpu").compile_backend == "aot_eager"  # the environment names the backend
    assert plan_speed("default", "cuda") == plan_speed("default", "cpu")
    assert not plan_speed("default", "cuda").fused_qkv


def test_the_recompile_limit_runs_the_module_uncompiled_with_a_warning(caplog):
    import torch

    from charstudio.models.speed import compile_module

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x).relu()

    net = Net().eval()
    gate = compile_module(net, "the test net", "eager", max_compiles=2)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="charstudio.models.speed"):
        for rows in (2, 3, 5, 7):
            x = torch.randn(rows, 4)
            assert torch.equal(net(x), net.lin(x).relu())
    # 2 rows compiles a static graph, 3 rows recompiles with the batch dimension dynamic; that
    # reaches the limit of 2, so 5 and 7 rows run uncompiled, with one warning that says so.
    assert (gate.compiles, gate.compiled_calls, gate.eager_calls) == (2, 2, 2)
    assert any("compiled 2 times" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    with torch.enable_grad():
        assert net(torch.randn(2, 4, requires_grad=True)).requires_grad


# -- mini: the pictures ---------------------------------------------------------------------------------
def test_max_is_close_to_default_and_default_undoes_it_bit_for_bit_on_mini():
    import torch

    from charstudio import Studio

    plain = Studio.from_pretrained("mini", device="cpu", speed="default")
    assert plain.speed == "default"
    unet = plain.components["unet"]
    before_keys = set(unet.state_dict())
    before_procs = {k: type(v) for k, v in unet.attn_processors.items()}
    settings = dict(seed=5, num_inference_steps=6)
    ref = plain.generate("a girl with long red hair", **settings)

    done = plain.set_speed("max", channels_last=True, compile_backend="eager")
    assert plain.speed == "max" and any("fused QKV" in d for d in done) and any("channels_last" in d for d in done)
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    fast = plain.generate("a girl with long red hair", **settings)
    diff = np.abs(px(fast) - px(ref))
    assert diff.max() <= MAX_PIXEL_DIFF and diff.mean() <= MEAN_PIXEL_DIFF, (diff.max(), diff.mean())
    assert unet_compiles(plain) == 1  # one picture size: one graph, 6 steps through it

    plain.set_speed("default")
    assert plain.speed == "default"
    assert set(unet.state_dict()) == before_keys  # the fused projections are gone
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before_procs
    assert "forward" not in vars(unet) and unet.conv_in.weight.is_contiguous()
    again = plain.generate("a girl with long red hair", **settings)
    assert np.array_equal(px(again), px(ref))  # the default path's pixels, bit for bit


# -- tiny, compiled: recompiles and features ----------------------------------------------------------
@pytest.fixture(scope="module")
def fast_tiny():
    import torch

    from charstudio import Studio

    torch._dynamo.reset()  # count this module's compiles from nothing
    studio = Studio.from_pretrained("tiny", device="cpu", speed="max")
    studio.set_speed("max", compile_backend="eager")
    return studio


@pytest.fixture(scope="module")
def plain_tiny():
    """The same model on the default path (this module's own: it gets adapters and words)."""
    from charstudio import Studio

    return Studio.from_pretrained("tiny", device="cpu")


def close(a, b) -> bool:
    d = np.abs(px(a) - px(b))
    return d.max() <= MAX_PIXEL_DIFF and d.mean() <= MEAN_PIXEL_DIFF


@pytest.fixture(scope="module")
def hero_lora(tmp_path_factory):
    import torch
    from peft import LoraConfig

    from charstudio.lora import save_lora
    from charstudio.models.tiny import build_tiny_components

    unet = build_tiny_components(0)["unet"]
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))  # random, non-zero update
    return save_lora(unet, None, tmp_path_factory.mktemp("speed_lora") / "hero", "hero")["diffusers"].parent


def test_lora_changes_after_compiling_change_the_output_and_skip_the_fused_projections(fast_tiny, plain_tiny,
                                                                                       hero_lora):
    import torch

    base = fast_tiny.generate("a knight", seed=2, **FAST)
    fast_tiny.load_lora(hero_lora)
    plain_tiny.load_lora(hero_lora)
    try:
        on = fast_tiny.generate("a knight", seed=2, **FAST)
        assert np.abs(px(on) - px(base)).mean() > 1  # no stale graph: the adapter is in the picture
        # ... and in q/k/v too: with the fused copy of the base weights it would differ from this
        assert close(on, plain_tiny.generate("a knight", seed=2, **FAST))
        weights = {}
        for w in (0.5, 0.25, 0.8):
            fast_tiny.set_loras({"hero": w})
            plain_tiny.set_loras({"hero": w})
            weights[w] = fast_tiny.generate("a knight", seed=2, **FAST)
            assert close(weights[w], plain_tiny.generate("a knight", seed=2, **FAST))
            if w == 0.25:
                compiles = unet_compiles(fast_tiny)
        assert np.abs(px(weights[0.5]) - px(on)).mean() > 0.5
        assert unet_compiles(fast_tiny) == compiles  # after one change the weight is a graph input
        fast_tiny.fuse_loras()
        assert close(fast_tiny.generate("a knight", seed=2, **FAST), weights[0.8])
        fast_tiny.unfuse_loras()
    finally:
        fast_tiny.unload_loras()
        plain_tiny.unload_loras()
    # back to the base model (up to the rounding peft's merge and unmerge leave in the weights)
    assert close(fast_tiny.generate("a knight", seed=2, **FAST), base)
    attn = fast_tiny.components["unet"].down_blocks[0].attentions[0].transformer_blocks[0].attn1
    with torch.no_grad():  # the fused copy follows the base weights as the adapters left them
        assert torch.equal(attn.to_qkv.weight, torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight]))


def test_reference_attention_and_tracing_run_uncompiled_and_draw_as_the_default_path(fast_tiny, plain_tiny):
    from charstudio.models.speed import compile_stats

    eager = compile_stats(fast_tiny)["unet"]["eager_calls"]
    poses = ["standing_front", "walking"]
    sheet = fast_tiny.sheet("a knight", poses, seed=4, same_noise=False, reference_strength=1.0, **FAST)
    want = plain_tiny.sheet("a knight", poses, seed=4, same_noise=False, reference_strength=1.0, **FAST)
    for a, b in zip(sheet.images, want.images, strict=True):
        d = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
        assert d.max() <= MAX_PIXEL_DIFF
    trace, result = fast_tiny.trace("a knight", seed=3, **FAST)
    assert trace.attention is not None and trace.attention_calls > 0
    stats = compile_stats(fast_tiny)["unet"]
    assert stats["eager_calls"] >= eager + 2 * len(poses) + 2  # every UNet call of those runs
    # the processors came back: the next run is compiled again, without recompiling
    calls, compiles = stats["compiled_calls"], stats["compiles"]
    fast_tiny.generate("a knight", seed=3, **FAST)
    assert compile_stats(fast_tiny)["unet"]["compiled_calls"] == calls + 2
    assert compile_stats(fast_tiny)["unet"]["compiles"] == compiles


def test_the_feature_cache_runs_uncompiled_and_draws_as_the_default_path(fast_tiny, plain_tiny):
    """Draft mode's feature cache swaps the deep layers' forwards: a compiled graph would have traced
    past them, so the UNet runs eager while the cache is in place and compiled again after."""
    from charstudio.models.speed import compile_stats

    settings = dict(FAST, seed=5, num_inference_steps=6, feature_cache={"interval": 3})
    eager = compile_stats(fast_tiny)["unet"]["eager_calls"]
    got = fast_tiny.run(fast_tiny.make_config("a knight", **settings)).image
    want = plain_tiny.run(plain_tiny.make_config("a knight", **settings)).image
    d = np.abs(np.asarray(got, dtype=np.int16) - np.asarray(want, dtype=np.int16))
    assert d.max() <= MAX_PIXEL_DIFF
    assert compile_stats(fast_tiny)["unet"]["eager_calls"] == eager + 6
    calls = compile_stats(fast_tiny)["unet"]["compiled_calls"]
    fast_tiny.generate("a knight", seed=3, **FAST)
    assert compile_stats(fast_tiny)["unet"]["compiled_calls"] == calls + 2


def test_an_embedding_loaded_on_a_compiled_studio_writes_its_word(fast_tiny, plain_tiny, tmp_path):
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file({"emb_params": torch.randn(1, 32)}, str(tmp_path / "speedneg.safetensors"))
    before = fast_tiny.generate("a girl", negative_prompt="speedneg", seed=3, **FAST)
    for studio in (fast_tiny, plain_tiny):
        studio.load_embedding(tmp_path / "speedneg.safetensors")
    try:
        after = fast_tiny.generate("a girl", negative_prompt="speedneg", seed=3, **FAST)
        assert not np.array_equal(px(after), px(before))
        assert close(after, plain_tiny.generate("a girl", negative_prompt="speedneg", seed=3, **FAST))
    finally:
        for studio in (fast_tiny, plain_tiny):
            studio.unload_embedding("speedneg")


def test_picture_and_batch_sizes_compile_twice_at_most(fast_tiny, plain_tiny):
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    first = fast_tiny.generate("a knight", seed=1, **FAST)
    assert close(first, plain_tiny.generate("a knight", seed=1, **FAST))
    compiles = unet_compiles(fast_tiny)  # the earlier tests ran at this size and batch only
    fast_tiny.generate("a knight", seed=1, num_inference_steps=2, width=48, height=32)
    assert unet_compiles(fast_tiny) == compiles + 1  # a second size: one graph, batch/height/width symbolic
    for width, height, n in ((64, 32, 1), (48, 48, 2), (32, 48, 3)):
        result = fast_tiny.generate("a knight", seed=1, num_inference_steps=2, width=width, height=height,
                                    num_images=n)
        assert result.images[0].size == (width, height) and len(result.images) == n
    assert unet_compiles(fast_tiny) == compiles + 1  # every later size and batch reuses it
    assert counters["stats"]["unique_graphs"] > graphs  # the counts are dynamo's own


def test_an_ip_adapter_on_a_fused_studio_draws_as_the_default_path_and_gives_the_processors_back(
        plain_tiny, tmp_path, monkeypatch):
    from PIL import Image

    from charstudio import Studio
    from charstudio.models.speed import FusedQKVAttnProcessor
    from charstudio.sheets import ip_adapter

    monkeypatch.delenv("CHARSTUDIO_COMPILE_BACKEND", raising=False)
    studio = Studio.from_pretrained("tiny", device="cpu", speed="max")  # on the CPU: fused QKV, no compile
    unet = studio.components["unet"]
    from helpers import tiny_ip_adapter

    tiny_ip_adapter(unet, tmp_path)
    red = Image.new("RGB", (64, 64), (255, 0, 0))
    without = studio.generate("a knight", seed=1, **FAST)
    drawn = {}
    for s in (studio, plain_tiny):
        with ip_adapter(s, str(tmp_path), red, 1.0, weight_name="ip-adapter_tiny.safetensors"):
            drawn[s] = s.generate("a knight", seed=1, **FAST)
    assert np.abs(px(drawn[studio]) - px(without)).mean() > 1  # the adapter steers the picture
    assert close(drawn[studio], drawn[plain_tiny])
    assert all(isinstance(p, FusedQKVAttnProcessor) for p in unet.attn_processors.values())
    assert np.array_equal(px(studio.generate("a knight", seed=1, **FAST)), px(without))


def test_the_cli_loads_the_fast_path(monkeypatch):
    import argparse

    from charstudio.cli.generate_commands import add_model_args, load_studio

    monkeypatch.delenv("CHARSTUDIO_COMPILE_BACKEND", raising=False)
    p = argparse.ArgumentParser()
    add_model_args(p)
    args = p.parse_args(["--model", "tiny", "--device", "cpu", "--speed", "max"])
    studio = load_studio(args)
    assert studio.speed == "max"
    assert "to_qkv" in dict(studio.components["unet"].named_modules())["down_blocks.0.attentions.0.transformer_blocks.0.attn1"]._modules
    with pytest.raises(SystemExit):
        p.parse_args(["--speed", "ludicrous"])


def test_training_gradients_take_the_uncompiled_path_through_the_adapter(fast_tiny):
    """LoRA training runs the studio's UNet with gradients and adapters on to_q/k/v: uncompiled,
    and unfused (the adapter gets its gradient)."""
    import torch
    from peft import LoraConfig

    from charstudio.models.speed import compile_stats

    unet = fast_tiny.components["unet"]
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v"]), adapter_name="t")
    try:
        before = compile_stats(fast_tiny)["unet"]
        sample = torch.randn(1, 4, 8, 8)
        text = torch.randn(1, 77, unet.config.cross_attention_dim)
        unet.train()
        out = unet(sample, 10, encoder_hidden_states=text).sample
        out.square().mean().backward()
        unet.eval()
        after = compile_stats(fast_tiny)["unet"]
        assert after["eager_calls"] == before["eager_calls"] + 1 and after["compiles"] == before["compiles"]
        grads = [p.grad for n, p in unet.named_parameters() if "lora_B" in n and ".to_q." in n]
        assert grads and all(g is not None for g in grads)
    finally:
        unet.delete_adapters(["t"])
        unet.zero_grad(set_to_none=True)
