"""CLIP tokenizers built in memory, with no files from the hub.

- `byte_level_tokenizer`: the 256 byte symbols, their end-of-word forms and the two special
  tokens, with no merges (every character one token). Enough for the toy models.
- `clip_tokenizer`: the real CLIP BPE (49408 tokens), built from the vocabulary file that the
  PyPI package open_clip_torch ships (`open_clip/bpe_simple_vocab_16e6.txt.gz`, MIT licence).
  SD 1.x's tokenizer and both of SDXL's use it; SDXL's second pads with ``!``. It gives the ids
  the hub's tokenizers give, so a single-file checkpoint needs no download to prompt.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

START, END = "<|startoftext|>", "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408
CLIP_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2  # 48894 merge rules after the byte symbols
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for raw bytes, in byte order.

    Printable Latin-1 bytes stand for themselves; the rest are shifted past U+0100 so that
    no symbol is whitespace or a control character.
    """
    symbols, shifted = [], 0
    for b in range(256):
        if b in _PRINTABLE:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


_PRINTABLE = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))


def _base_vocab(clip_order: bool = False) -> list[str]:
    """The byte symbols and their end-of-word forms; in CLIP's vocabulary the printable bytes
    come first (so ``!`` is id 0), then the shifted ones."""
    symbols = byte_symbols()
    if clip_order:
        symbols = [symbols[b] for b in range(256) if b in _PRINTABLE] + \
                  [symbols[b] for b in range(256) if b not in _PRINTABLE]
    return symbols + [s + "</w>" for s in symbols]


def byte_level_tokenizer(pad_token: str = END) -> Any:
    """A byte-level CLIP tokenizer with no merges (for the toy models)."""
    from transformers import CLIPTokenizer

    tokens = _base_vocab() + [START, END]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77,
                         pad_token=pad_token)


def bpe_vocabulary_file() -> Path:
    """Where open_clip_torch's CLIP BPE file is, found without importing open_clip (slow)."""
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / BPE_FILE
        if path.is_file():
            return path
    raise ModelLoadError(f"the CLIP vocabulary (open_clip/{BPE_FILE}) is missing: install open_clip_torch "
                         "(pip install open_clip_torch, a charstudio dependency), or pass config= (CLI: --config) "
                         "naming a diffusers folder of the base model")


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    lines = gzip.decompress(bpe_vocabulary_file().read_bytes()).decode("utf-8").split("\n")
    merges = tuple(tuple(m.split()) for m in lines[1:1 + CLIP_MERGES])  # line 0 is a version header
    tokens = _base_vocab(clip_order=True) + ["".join(m) for m in merges] + [START, END]
    if len(tokens) != CLIP_VOCAB_SIZE or len(set(tokens)) != CLIP_VOCAB_SIZE:
        raise ModelLoadError(f"{bpe_vocabulary_file()} does not hold the CLIP vocabulary ({len(set(tokens))} distinct "
                             f"tokens, expected {CLIP_VOCAB_SIZE}): reinstall open_clip_torch")
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(pad_token: str = END) -> Any:
    """The real CLIP tokenizer (SD 1.x, and SDXL's first; SDXL's second pads with ``!``)."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77, pad_token=pad_token)
