"""Reading weight files: the one place charstudio opens a ``.safetensors`` file or unpickles one.

Every reader names the field the file came from (``model``, ``lora``, ``embedding``,
``ip_adapter_weights``, ``resume``, ...) and raises one error type, `WeightFileError`, whose
one-line message names that field and the file. Pickled files (``.ckpt``, ``.pt``, ``.pth``,
``.bin``) can run code when unpickled, so they are read only with ``allow_pickle=True``, and
then always with ``torch.load(weights_only=True)`` (memory-mapped when the file is a zip, so
reading keys or shapes does not read the tensors).

A leaf: it imports nothing from charstudio but its errors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .errors import CharstudioError, FileFieldError, ModelLoadError, describe

if TYPE_CHECKING:  # pragma: no cover
    import torch

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")  # one list for models, LoRAs, embeddings and adapters
_PICKLE_ADVICE = "use a .safetensors copy from a source you trust"

Shapes = Mapping[str, tuple[int, ...]]


class WeightFileError(FileFieldError, ModelLoadError):
    """A weight file cannot be read as what it should be (not a safetensors file, a pickle that
    holds more than tensors, a pickle without the opt-in, a NaN where ``finite`` asked ...).

    The message is one line: ``<field>=<file> <problem>``. It is an InputFileError (a file the user
    gave) and, for the callers that caught those before there was one reader, also a ConfigError and
    a ModelLoadError."""

    def __init__(self, field: str, path: str | os.PathLike, problem: str, *, label: str | None = None):
        self.field = field
        self.value = str(path)
        self.expected = problem
        Exception.__init__(self, f"{field}={label if label is not None else repr(str(path))} {problem}")


def is_pickle(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a pickled weight file (by its suffix, as every loader decides)."""
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def read_keys(path: str | os.PathLike, field: str, *, allow_pickle: bool = False, what: str = "weight file",
              advice: str = "re-download it or use another one", label: str | None = None) -> list[str]:
    """The tensor names in a weight file, without reading its tensors (a safetensors header; a
    pickle memory-mapped). ``what`` and ``advice`` complete the message when it cannot be read;
    ``label`` is how the message names the file (default: the path as given)."""
    return list(read_shapes(path, field, allow_pickle=allow_pickle, what=what, advice=advice, label=label))


def read_shapes(path: str | os.PathLike, field: str, *, allow_pickle: bool = False, what: str = "weight file",
                advice: str = "re-download it or use another one", label: str | None = None) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape by name (only the header of a ``.safetensors`` file is read)."""
    p = Path(path)
    if is_pickle(p):
        state = _read_pickle(p, field, allow_pickle, what, label)
        return {k: tuple(v.shape) for k, v in state.items()}
    with _safetensors(p, field, what, advice, label) as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def read_metadata(path: str | os.PathLike, field: str, *, what: str = "weight file",
                  advice: str = "re-download it or use another one", label: str | None = None) -> dict[str, str]:
    """A ``.safetensors`` file's header metadata (kohya's ``ss_*`` fields, diffusers' peft configs)."""
    with _safetensors(Path(path), field, what, advice, label) as f:
        return dict(f.metadata() or {})


def read_tensors(path: str | os.PathLike, field: str, *, allow_pickle: bool = False, what: str = "weight file",
                 advice: str = "re-download it or use another one", label: str | None = None,
                 check: Callable[[Shapes], None] | None = None, finite: bool = False,
                 bare_tensor: str | None = None) -> dict[str, "torch.Tensor"]:
    """A weight file's tensors by name, on the CPU.

    ``check`` sees every tensor's shape before any tensor is read (for a pickle: after it was
    unpickled, which cannot be avoided) and raises what it finds wrong. ``finite``: refuse NaN or
    inf in any floating-point tensor (one such value turns every picture black), naming the tensor.
    A pickle's nested dicts are flattened with dots (A1111's ``string_to_param["*"]`` becomes
    ``string_to_param.*``), Lightning's ``state_dict`` wrapper is taken off, and values other than
    tensors are left out; a pickle of one bare tensor is returned under ``bare_tensor`` (None:
    refused)."""
    p = Path(path)
    if is_pickle(p):
        tensors = _read_pickle(p, field, allow_pickle, what, label, bare_tensor)
        if check is not None:
            check({k: tuple(v.shape) for k, v in tensors.items()})
    else:
        with _safetensors(p, field, what, advice, label) as f:
            keys = list(f.keys())
            if check is not None:
                check({k: tuple(f.get_slice(k).get_shape()) for k in keys})
            tensors = {k: f.get_tensor(k) for k in keys}
    if finite:
        _check_finite(tensors, field, p, label)
    return tensors


class _safetensors:
    """``safe_open`` on the CPU; a file it cannot read (safetensors' own SafetensorError for a bad
    header, an OSError) becomes a WeightFileError. Errors the caller raises inside pass through."""

    def __init__(self, path: Path, field: str, what: str, advice: str, label: str | None):
        self.path, self.field, self.what, self.advice, self.label = path, field, what, advice, label
        self._cm: Any = None

    def _error(self, exc: BaseException) -> WeightFileError:
        return WeightFileError(self.field, self.path, f"is not a readable {self.what}: it cannot be read as a "
                               f"safetensors file ({describe(exc, 160)}); {self.advice}", label=self.label)

    def __enter__(self) -> Any:
        from safetensors import safe_open

        try:
            self._cm = safe_open(str(self.path), framework="pt", device="cpu")
            return self._cm.__enter__()
        except Exception as exc:
            raise self._error(exc) from exc

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        self._cm.__exit__(kind, exc, tb)
        if exc is not None and not isinstance(exc, CharstudioError) and isinstance(exc, Exception):
            raise self._error(exc) from exc  # a tensor that cannot be read (a truncated file)
        return False


def _read_pickle(p: Path, field: str, allow_pickle: bool, what: str, label: str | None,
                 bare_tensor: str | None = None) -> dict[str, Any]:
    """A pickled file's tensors, flattened (see `read_tensors`), unpickled with weights_only=True."""
    import zipfile

    import torch

    if not allow_pickle:
        raise WeightFileError(field, p, "is a pickled file, which can run code when loaded: pickled weights refused; "
                              "convert it to .safetensors, or opt in with allow_pickle=True (CLI: --allow-pickle) "
                              "if you trust it", label=label)
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(p))
    except Exception as exc:  # UnpicklingError for anything but tensors and plain containers, EOFError, ...
        raise WeightFileError(field, p, f"is not a readable {what}: torch.load(weights_only=True) refused it "
                              f"({describe(exc, 160)}): the file may run code, or is damaged; {_PICKLE_ADVICE}",
                              label=label) from exc
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # as diffusers unwraps Lightning's
        state = state["state_dict"]
    if isinstance(state, torch.Tensor) and bare_tensor is not None:
        return {bare_tensor: state}
    if not isinstance(state, dict):
        raise WeightFileError(field, p, f"holds a {type(state).__name__}, not a dict of tensors: {_PICKLE_ADVICE}",
                              label=label)
    return _flatten(state, "")


def _flatten(state: Mapping[Any, Any], prefix: str) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
    return out


def _check_finite(tensors: Mapping[str, Any], field: str, p: Path, label: str | None) -> None:
    import torch

    for key, tensor in tensors.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise WeightFileError(field, p, f"is damaged: its tensor {key} holds NaN or infinite values", label=label)
