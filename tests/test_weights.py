"""One weight reader (issue #35): charstudio.weights is the only place a weight file is opened.
Every reader raises one error type, a WeightFileError (an InputFileError), in one line naming the
field and the file; pickles are read only with the opt-in, and then with weights_only=True."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from charstudio.errors import InputFileError
from charstudio.weights import WeightFileError, read_keys, read_metadata, read_shapes, read_tensors

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "charstudio"


def _junk(tmp_path, name="junk.safetensors"):
    path = tmp_path / name
    path.write_bytes(b"\x00\x01 not a weight file at all" * 3)
    return path


def _readers():
    from charstudio.embeddings import read_embedding
    from charstudio.lora import read_lora_file
    from charstudio.models.loading import checkpoint_keys

    return {"lora": read_lora_file, "model": lambda p: checkpoint_keys(str(p)), "embedding": read_embedding}


@pytest.mark.parametrize("field", ["lora", "model", "embedding"])
def test_every_reader_raises_one_error_type_naming_the_field_and_the_file(field, tmp_path):
    path = _junk(tmp_path)
    with pytest.raises(WeightFileError) as err:
        _readers()[field](path)
    message = str(err.value)
    assert isinstance(err.value, InputFileError)
    assert message.startswith(f"{field}={str(path)!r} ") and "\n" not in message
    assert "cannot be read as a safetensors file" in message


def test_a_pickle_is_refused_without_the_opt_in_even_where_the_caller_forgot_to_check(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, path)
    for read in (read_keys, read_shapes, read_tensors):
        with pytest.raises(WeightFileError, match=r"^resume='.*weights\.pt' is a pickled file.*allow_pickle=True"):
            read(path, "resume")
    assert read_tensors(path, "resume", allow_pickle=True)["w"].tolist() == [1.0, 1.0]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_an_opted_in_pickle_is_read_weights_only_so_its_code_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "callback": _Payload(marker)}, path)
    with pytest.raises(WeightFileError, match=r"torch\.load\(weights_only=True\) refused it"):
        read_tensors(path, "model", allow_pickle=True)
    assert not marker.exists()


def test_pickles_are_flattened_and_unwrapped_as_every_caller_read_them(tmp_path):
    path = tmp_path / "nested.bin"
    torch.save({"state_dict": {"image_proj": {"proj.weight": torch.zeros(3, 2)}, "step": 5,
                               "string_to_param": {"*": torch.zeros(1, 4)}}}, path)
    assert read_shapes(path, "x", allow_pickle=True) == {"image_proj.proj.weight": (3, 2),
                                                          "string_to_param.*": (1, 4)}
    bare = tmp_path / "bare.pt"
    torch.save(torch.zeros(2, 4), bare)
    assert list(read_tensors(bare, "embedding", allow_pickle=True, bare_tensor="emb_params")) == ["emb_params"]
    with pytest.raises(WeightFileError, match=r"holds a Tensor, not a dict of tensors"):
        read_tensors(bare, "model", allow_pickle=True)


def test_safetensors_shapes_and_metadata_come_from_the_header_and_checks_run_before_the_data(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.full((4,), float("nan"))}, str(path), metadata={"k": "v"})
    assert read_shapes(path, "x") == {"a": (2, 3), "b": (4,)}
    assert read_keys(path, "x") == ["a", "b"]
    assert read_metadata(path, "x") == {"k": "v"}
    seen = []
    with pytest.raises(WeightFileError, match=r"^lora='.*w\.safetensors' is damaged: its tensor b holds NaN"):
        read_tensors(path, "lora", check=seen.append, finite=True)
    assert seen == [{"a": (2, 3), "b": (4,)}]
    assert read_tensors(path, "lora").keys() == {"a", "b"}  # without finite, NaN is the caller's business


def test_no_module_but_weights_opens_a_weight_file():
    """The guard: safe_open, safetensors' load_file and torch.load appear in charstudio/weights.py only."""
    pattern = re.compile(r"\bsafe_open\b|\bload_file\b\s*\(|\btorch\.load\s*\(|from safetensors\.torch import load_file")
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "weights.py" and path.parent == PACKAGE:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            if pattern.search(code) and "``" not in code and "def load_file" not in code \
                    and "self.load_file" not in code and "poses.load_file" not in code:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}")
    assert not found, "weight files opened outside charstudio/weights.py:\n" + "\n".join(found)


def test_weights_is_a_leaf():
    """It imports nothing from charstudio but the errors, so anything may use it without a cycle."""
    code = ("import sys, charstudio.weights; "
            "print(sorted(m for m in sys.modules if m.startswith('charstudio.') and m != 'charstudio.weights'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "['charstudio.errors']", out
