"""Finding LoRA files (a name in ``lora/``, a folder or a file) and reading them: safetensors only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..weights import PICKLE_SUFFIXES, read_metadata, read_tensors  # one reader and one list for every weight file

if TYPE_CHECKING:  # pragma: no cover
    import torch

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
DEFAULT_LORA_DIR = "lora"


def resolve_lora_path(path_or_name: str | os.PathLike, lora_dir: str | os.PathLike = DEFAULT_LORA_DIR) -> Path:
    """Turn a file, a LoRA folder, or a trained LoRA's name (``lora/NAME/``) into a weights file."""
    raw = str(path_or_name)
    if not raw.strip():
        raise ConfigError("lora", raw, "give a .safetensors file, a LoRA folder, or the name of a LoRA under lora/")
    p = Path(raw).expanduser()
    candidates: list[Path] = []
    if p.is_file():
        candidates = [p]
    elif p.is_dir():
        candidates = [p / LORA_WEIGHTS_NAME, p / f"{p.name}.safetensors"]
    else:
        base = Path(lora_dir).expanduser()
        candidates = [base / raw / LORA_WEIGHTS_NAME, base / raw / f"{raw}.safetensors", base / f"{raw}.safetensors"]
    for c in candidates:
        if c.is_file():
            if c.suffix.lower() in PICKLE_SUFFIXES:
                raise ConfigError("lora", raw, "pickled LoRA files (.ckpt/.pt/.bin) can run code when loaded; "
                                  "use a .safetensors file")
            if c.suffix.lower() != ".safetensors":
                raise ConfigError("lora", raw, "LoRA files must be .safetensors")
            return c
    if p.is_dir():
        others = sorted(x.name for x in p.glob("*.safetensors"))
        if len(others) == 1:
            return p / others[0]
        raise ConfigError("lora", raw, f"the folder has no {LORA_WEIGHTS_NAME}"
                          + (f"; pick one of {others}" if others else " and no .safetensors file"))
    known = list_loras(lora_dir)
    raise ConfigError("lora", raw, "no such file or folder, and no LoRA of that name under "
                      f"{str(lora_dir)!r}" + (f" (known: {', '.join(known)})" if known else ""))


def list_loras(lora_dir: str | os.PathLike = DEFAULT_LORA_DIR) -> list[str]:
    """Names of the trained LoRAs under ``lora_dir`` (folders holding ``pytorch_lora_weights.safetensors``)."""
    base = Path(lora_dir).expanduser()
    if not base.is_dir():
        return []
    # Hidden folders are an overwrite's staging copy (charstudio.training.staging_dir), not a LoRA.
    return sorted(d.name for d in base.iterdir() if not d.name.startswith(".") and (d / LORA_WEIGHTS_NAME).is_file())


def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:
    """The tensors and the header metadata of a safetensors LoRA file.

    Every tensor is checked for NaN and inf, whatever it is for (DoRA scales, alphas, magnitudes,
    keys for parts the model lacks): one such value turns every picture black."""
    p = Path(path)
    what = dict(what="LoRA file", advice="re-download it or use another one")
    metadata = read_metadata(p, "lora", **what)
    tensors: dict[str, Any] = read_tensors(p, "lora", finite=True, **what)
    if not tensors:
        raise ConfigError("lora", str(p), "the file holds no tensors")
    return tensors, metadata
