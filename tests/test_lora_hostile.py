"""LoRA files from a hostile-input trial (#34 follow-up): a module missing one of its halves, a
file that does not fit the model it was made for, a DoRA scale of neither axis, a kohya header
that disagrees with its tensors, and a `--lora FILE:WORD` weight. Each is refused in one line
naming what is wrong; the valid neighbours still load."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TinyFamily, lora_model, save_lora_model
from safetensors.torch import load_file, save_file

from charstudio import lora
from charstudio.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

SD1 = TinyFamily("sd1")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """SD 1.x tiny LoRA files as charstudio writes them: plain and DoRA, diffusers and kohya."""
    folder = tmp_path_factory.mktemp("hostile")
    plain = save_lora_model(SD1, lora_model(SD1), folder / "plain", "plain")
    dora = save_lora_model(SD1, lora_model(SD1, dora=True), folder / "dora", "dora")
    return {"plain": plain, "dora": dora, "folder": folder}


def _rewrite(src, dst, edit, metadata=None):
    """Copy a safetensors file with `edit(tensors)` applied (and its header replaced when given)."""
    from safetensors import safe_open

    tensors = load_file(str(src))
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata() or {})
    edit(tensors)
    save_file(tensors, str(dst), metadata=meta if metadata is None else metadata)
    return dst


def _split(path):
    raw, meta = lora.read_lora_file(path)
    return lora.split_lora(raw, meta, source=str(path))


# 1. a module with one half ----------------------------------------------------------------------

@pytest.mark.parametrize("fmt, drop, keep", [("diffusers", ".lora_B.weight", "lora_A.weight"),
                                             ("diffusers", ".lora_A.weight", "lora_B.weight"),
                                             ("kohya", ".lora_up.weight", "lora_down.weight"),
                                             ("kohya", ".lora_down.weight", "lora_up.weight")])
def test_a_module_missing_one_half_is_named(files, tmp_path, fmt, drop, keep):
    src = files["plain"][fmt]
    victim = next(k for k in load_file(str(src)) if "attn2" in k and "to_v" in k and k.endswith(drop))
    module = victim.removesuffix(drop)
    bad = _rewrite(src, tmp_path / "half.safetensors", lambda t: t.pop(victim))
    with pytest.raises(ConfigError) as err:
        _split(bad)
    msg = str(err.value)
    assert "\n" not in msg and module in msg and keep in msg and drop.lstrip(".") in msg and "both halves" in msg
    assert len(_split(src).unet) > 0  # the whole file reads


# 2. a file made for this architecture that does not fit it --------------------------------------

def test_a_misfit_for_the_models_own_architecture_says_so_plainly(files, tmp_path):
    unet, te = SD1.components()["unet"], SD1.components()["text_encoder"]
    src = files["plain"]["diffusers"]
    victim = next(k for k in load_file(str(src)) if "attn1.to_k.lora_A" in k)

    def widen(t):
        t[victim] = torch.randn(t[victim].shape[0], 99)

    bad = _rewrite(src, tmp_path / "wide.safetensors", widen)
    with pytest.raises(ConfigError) as err:
        lora.check_lora_fits(_split(bad), unet, te, source=str(bad))
    msg = str(err.value)
    assert "looks like" not in msg and "but the model is" not in msg
    assert "does not fit this model (this model (cross-attention width" not in msg  # not a stutter either
    assert "does not fit this model" in msg and "the LoRA expects 99" in msg
    lora.check_lora_fits(_split(src), unet, te, source=str(src))  # the file it came from fits


# 3. a DoRA scale of neither axis ----------------------------------------------------------------

def test_a_dora_scale_of_neither_axis_names_both_shapes(files, tmp_path):
    src = files["dora"]["kohya"]
    tensors = load_file(str(src))
    base = next(k for k in tensors if "self_attn_q_proj" in k and k.endswith(".dora_scale")).removesuffix(".dora_scale")
    out, fan_in = tensors[f"{base}.lora_up.weight"].shape[0], tensors[f"{base}.lora_down.weight"].shape[1]
    odd = out + 3

    def skew(t):
        t[f"{base}.dora_scale"] = torch.ones(odd, 1)

    bad = _rewrite(src, tmp_path / "odd.safetensors", skew)
    with pytest.raises(ConfigError) as err:
        _split(bad)
    msg = str(err.value)
    assert f"{base}.dora_scale" in msg and f"({odd}, 1)" in msg and f"({out}, {fan_in})" in msg
    assert "input axis" not in msg

    def input_axis(t):
        t[f"{base}.dora_scale"] = torch.ones(1, fan_in + 1)  # a real input-axis scale of a wider layer
        t[f"{base}.lora_down.weight"] = torch.randn(t[f"{base}.lora_down.weight"].shape[0], fan_in + 1)

    real = _rewrite(src, tmp_path / "in.safetensors", input_axis)
    with pytest.raises(ConfigError, match="decomposed along the input axis"):
        _split(real)


# 4. a kohya header that disagrees with the tensors ----------------------------------------------

def _kohya_meta(src, **fields):
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata() or {})
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()})
    return meta


def test_a_kohya_header_rank_no_module_has_is_refused(files, tmp_path):
    src = files["plain"]["kohya"]
    assert _split(src).rank == 4
    bad = _rewrite(src, tmp_path / "dim.safetensors", lambda t: None,
                   _kohya_meta(src, ss_network_dim="128", ss_network_alpha="1"))
    with pytest.raises(ConfigError) as err:
        _split(bad)
    assert "ss_network_dim=128" in str(err.value) and "rank 4" in str(err.value)
    # what sd-scripts really writes still loads: resized files say "Dynamic", block_dims give blocks
    # ranks of their own, and a header rank some modules have (conv_dim for the rest)
    for name, meta in (("dyn", _kohya_meta(src, ss_network_dim="Dynamic")),
                       ("blocks", _kohya_meta(src, ss_network_dim="128", ss_network_args={"block_dims": "4,4"})),
                       ("same", _kohya_meta(src, ss_network_dim="4", ss_network_args={"conv_dim": "8"})),
                       ("none", _kohya_meta(src, ss_network_dim="None"))):
        assert _split(_rewrite(src, tmp_path / f"{name}.safetensors", lambda t: None, meta)).rank == 4


def test_a_kohya_header_claiming_dora_without_dora_tensors_is_refused(files, tmp_path):
    src = files["plain"]["kohya"]
    for args in ({"algo": "dora"}, {"algo": "lora", "dora_wd": "True"}):
        bad = _rewrite(src, tmp_path / "dora.safetensors", lambda t: None,
                       _kohya_meta(src, ss_network_args=args))
        with pytest.raises(ConfigError, match="no dora_scale tensors"):
            _split(bad)
    real = files["dora"]["kohya"]
    ok = _rewrite(real, tmp_path / "real.safetensors", lambda t: None,
                  _kohya_meta(real, ss_network_args={"algo": "lora", "dora_wd": "True"}))
    assert _split(ok).configs["unet"]["use_dora"]


# 5. --lora FILE:WORD ----------------------------------------------------------------------------

def test_cli_lora_weight_that_is_not_a_number_is_named(files, tmp_path):
    from charstudio.cli.generate_commands import parse_loras

    path = str(files["plain"]["kohya"])
    with pytest.raises(ConfigError) as err:
        parse_loras([f"{path}:abc"])
    msg = str(err.value)
    assert "'abc'" in msg and "not a number" in msg and "NAME[:WEIGHT]" in msg and "no such file" not in msg
    with pytest.raises(ConfigError, match="not a number"):  # a name under --lora-dir too
        parse_loras(["plain:abc"], lora_dir=str(files["folder"]))
    assert parse_loras([f"{path}:0.5"]) == [(path, 0.5)]
    odd = tmp_path / "a:b.safetensors"  # a ':' inside a file name is still part of the path
    odd.write_bytes(b"")
    assert parse_loras([str(odd)]) == [(str(odd), 1.0)]
