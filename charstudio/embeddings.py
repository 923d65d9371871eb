"""Textual-inversion embeddings (A1111's "embeddings"): new words whose vectors come from a file.

A file holds, per text encoder, ``n`` vectors as wide as that encoder's token embeddings:

- SD 1.x (A1111 ``.safetensors``): one tensor ``emb_params`` of shape (n, 768); older files have
  ``string_to_param.*`` (the pickled layout's ``string_to_param["*"]``, flattened), diffusers'
  ``learned_embeds`` files hold one tensor named after their token.
- SDXL: ``clip_l`` (n, 768) for ``text_encoder`` and ``clip_g`` (n, 1280) for ``text_encoder_2``.
- Pickled ``.pt`` / ``.bin`` files (A1111's and diffusers' older formats) load only with
  ``allow_pickle=True``, and then with ``torch.load(weights_only=True)``.

Loading goes through diffusers' own loader (``load_textual_inversion``), once per text encoder,
on the studio's shared tokenizers and encoders, so every pipeline of a studio sees the word. A
word with n vectors becomes n tokens ``word word_1 ... word_{n-1}`` as diffusers names them;
`expand_token_ids` puts all n in a prompt where the word is written (charstudio tokenizes
prompts itself, so diffusers' ``maybe_convert_prompt`` never sees them).

Named embeddings live in ``embeddings/`` next to ``lora/`` (relative to the working folder):
``embeddings/NAME.safetensors``; the word is the file's name, as in A1111.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .embedding_tokens import expand_token_ids  # noqa: F401  (its home before; conditioning reads it there)
from .errors import ConfigError, FileFieldError
from .models.family import DEFAULT_FAMILY, FAMILIES, ModelFamily, architecture_of_width, family_of_keys
from .weights import PICKLE_SUFFIXES, read_tensors

log = logging.getLogger(__name__)

DEFAULT_EMBEDDINGS_DIR = "embeddings"
SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
DIFFUSERS_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")  # a diffusers embedding folder
MAX_VECTORS = 75  # one prompt chunk: a longer embedding could never be written whole
MAX_WIDTH = 8192
# Characters A1111's prompt syntax uses, and whitespace: a word holding them could not be written.
_BAD_TOKEN = re.compile(r"[\s()\[\]{}:|,\\]")


@dataclass(frozen=True)
class EmbeddingFile:
    """An embedding file's vectors, checked for shape but not yet matched to a model.

    ``vectors`` maps ``emb_params`` (one tensor: SD 1.x layout) or ``clip_l`` and ``clip_g``
    (SDXL layout) to float32 tensors of shape (n, width): a family's ``embedding_keys``.
    """

    path: Path
    vectors: dict[str, Any]

    @property
    def family(self) -> ModelFamily:
        """The family whose layout the file has (its tensors' names)."""
        return family_of_keys(self.vectors, "embedding", str(self.path)) or DEFAULT_FAMILY

    @property
    def num_vectors(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    def describe(self) -> str:
        """What the file holds, for messages: "clip_l (1, 768) + clip_g (1, 1280)"."""
        return " + ".join(f"{k} {tuple(v.shape)}" for k, v in self.vectors.items())


# -- finding files -------------------------------------------------------------------------------
def resolve_embedding_path(path_or_name: str | os.PathLike,
                           embeddings_dir: str | os.PathLike = DEFAULT_EMBEDDINGS_DIR) -> Path:
    """A file, a diffusers embedding folder (``learned_embeds.*``), or a name in ``embeddings_dir``
    (``NAME.safetensors``, else ``NAME.pt`` / ``.bin``, which then need ``allow_pickle``)."""
    raw = str(path_or_name)
    if not raw.strip():
        raise ConfigError("embedding", raw, "give an embedding file (.safetensors) or the name of one in "
                          f"{str(embeddings_dir)!r}")
    p = Path(raw).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        for name in DIFFUSERS_NAMES:
            if (p / name).is_file():
                return p / name
        found = sorted(x.name for x in p.iterdir() if x.suffix.lower() in SUFFIXES)
        raise ConfigError("embedding", raw, "a folder: give one of its files"
                          + (f" ({', '.join(found[:5])})" if found else " (it holds no .safetensors file)"))
    base = Path(embeddings_dir).expanduser()
    candidates = [base / raw] if p.suffix.lower() in SUFFIXES else [base / f"{raw}{s}" for s in SUFFIXES]
    for c in candidates:
        if c.is_file():
            return c
    known = list_embeddings(embeddings_dir)
    raise ConfigError("embedding", raw, f"no such file, and no embedding of that name in {str(embeddings_dir)!r}"
                      + (f" (known: {', '.join(known[:20])})" if known else
                         " (put NAME.safetensors there, or give the file's path)"))


def list_embeddings(embeddings_dir: str | os.PathLike = DEFAULT_EMBEDDINGS_DIR) -> list[str]:
    """Names of the embedding files in ``embeddings_dir`` (their words, by default)."""
    base = Path(embeddings_dir).expanduser()
    if not base.is_dir():
        return []
    return sorted({f.stem for f in base.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES
                   and not f.name.startswith(".")})


def default_token(path: Path) -> str:
    """The word an embedding file is written as when no token is given: its file name, as A1111
    does (a diffusers folder's ``learned_embeds.*``: the folder's name)."""
    return path.parent.name if path.name in DIFFUSERS_NAMES else path.stem


def file_digest(path: Path) -> str:
    """The SHA-256 of a file (embeddings are kilobytes), to tell two copies of one apart."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- reading ---------------------------------------------------------------------------------------
def read_embedding(path: str | os.PathLike, *, allow_pickle: bool = False) -> EmbeddingFile:
    """Read an embedding file's vectors (safetensors; pickles only with ``allow_pickle``)."""
    p = Path(path)
    where = str(p)
    if p.suffix.lower() not in SUFFIXES:
        raise ConfigError("embedding", where, "not an embedding file: use .safetensors (or .pt/.bin with "
                          "allow_pickle=True)")
    pickled = p.suffix.lower() in PICKLE_SUFFIXES
    # A1111's pickles ({"string_to_param": {"*": t}}) come back as string_to_param.*, a bare tensor as emb_params.
    tensors = read_tensors(p, "embedding", allow_pickle=allow_pickle, what="embedding file",
                           advice="use a .safetensors copy from a source you trust",
                           check=None if pickled else lambda shapes: _check_header(where, shapes),
                           bare_tensor="emb_params")
    return EmbeddingFile(p, _pick_vectors(tensors, where))


def _check_shape(where: str, key: str, shape: Sequence[int]) -> None:
    if len(shape) not in (1, 2) or not all(shape) or (len(shape) == 2 and shape[0] > MAX_VECTORS) \
            or shape[-1] > MAX_WIDTH:
        raise FileFieldError(f"embedding {where}: {key}", tuple(shape),
                             f"expected (vectors, width) with 1 to {MAX_VECTORS} vectors, as A1111 and diffusers "
                             "write them; the file is not a textual-inversion embedding")


def _check_header(where: str, shapes: Mapping[str, Sequence[int]]) -> None:
    """A safetensors embedding's tensors, checked from its header before their data is read."""
    if len(shapes) > 16:
        raise FileFieldError(f"embedding {where}", f"{len(shapes)} tensors",
                             "an embedding holds one tensor (emb_params) or two (clip_l, clip_g); is it a "
                             "model or a LoRA?")
    for key, shape in shapes.items():
        _check_shape(where, key, shape)


def _pick_vectors(tensors: dict[str, Any], where: str) -> dict[str, Any]:
    """The file's vectors by layout (emb_params, or clip_l + clip_g) as float32 (n, width)."""
    import torch

    keys = sorted(tensors)
    # A family with one tensor per encoder (SDXL's clip_l + clip_g) needs all of them.
    several = [f for f in FAMILIES.values() if len(f.embedding_keys) > 1 and set(f.embedding_keys) & set(tensors)]
    if several:
        names = several[0].embedding_keys
        if not set(names) <= set(tensors):
            raise FileFieldError(f"embedding {where}", ", ".join(keys),
                                 f"an {several[0].label} embedding holds both {' and '.join(names)}")
        chosen = {k: tensors[k] for k in names}
    else:
        params = [k for k in keys if k.startswith("string_to_param.")]
        if "emb_params" in tensors:
            chosen = {"emb_params": tensors["emb_params"]}
        elif len(params) == 1 or "string_to_param.*" in params:
            chosen = {"emb_params": tensors[params[0] if len(params) == 1 else "string_to_param.*"]}
        elif len(keys) == 1:  # diffusers' learned_embeds: {token: tensor}
            chosen = {"emb_params": tensors[keys[0]]}
        else:
            raise FileFieldError(f"embedding {where}", ", ".join(keys[:6]) or "no tensors",
                                 "expected emb_params (A1111, SD 1.x), string_to_param.*, or "
                                 + " or ".join(f"{' + '.join(f.embedding_keys)} ({f.label})"
                                               for f in FAMILIES.values() if len(f.embedding_keys) > 1))
    out = {}
    for key, t in chosen.items():
        _check_shape(where, key, tuple(t.shape))
        if not t.is_floating_point():
            raise FileFieldError(f"embedding {where}: {key}", str(t.dtype), "expected floating-point vectors")
        t = t.detach().to(torch.float32).reshape(-1, t.shape[-1]).clone()
        if not torch.isfinite(t).all():
            raise FileFieldError(f"embedding {where}: {key}", "NaN/inf", "the vectors hold NaN or infinite values")
        out[key] = t
    if len({v.shape[0] for v in out.values()}) > 1:
        raise FileFieldError(f"embedding {where}", " + ".join(f"{k} {tuple(v.shape)}" for k, v in out.items()),
                             "clip_l and clip_g must hold the same number of vectors")
    return out


# -- matching a file to a model --------------------------------------------------------------------
def vectors_for(emb: EmbeddingFile, family: ModelFamily, widths: Sequence[int]) -> list[Any]:
    """The file's vectors for each of the model's text encoders (in ``family.text_parts`` order),
    or a one-line ConfigError saying which family the file is for and what this model needs.

    The file's layout (its tensors' names) tells its family. A file of another family is named as
    such when it is that family's by its widths too (SD 1.x's encoder is as wide as SDXL's first),
    or has more encoders than this model; otherwise its widths are named.
    """
    where = str(emb.path)
    theirs = emb.family
    got = [int(emb.vectors[k].shape[1]) for k in theirs.embedding_keys]
    has = " + ".join(f"{k} {w} wide" for k, w in zip(theirs.embedding_keys, got))
    need = " + ".join(f"{k} {w} wide" for k, w in zip(family.embedding_keys, widths))
    encoders = f"text encoder{'s' if len(widths) > 1 else ''} ({' and '.join(map(str, widths))} wide)"
    if theirs is family:
        if got == list(widths):
            return [emb.vectors[k] for k in family.embedding_keys]
        known = architecture_of_width(got[0])
        hint = f" ({known}'s are {got[0]} wide)" if known and known != family.label else ""
        raise ConfigError("embedding", where, f"its vectors ({has}) fit none of this {family.label} model's "
                          f"{encoders}: it was made for another model{hint}")
    if got[0] == widths[0] or len(got) > len(widths):
        raise ConfigError("embedding", where, f"it is an {theirs.label} embedding ({emb.describe()}) and this model is "
                          f"{family.label}: use an {family.label} embedding ({need})")
    raise ConfigError("embedding", where, f"its vectors ({has}) fit none of this {family.label} model's {encoders}: "
                      f"use an {family.label} embedding ({need})")


def check_token(token: Any, tokenizers: Iterable[Any]) -> str:
    """The word for an embedding, unless it cannot be written in a prompt or already means
    something to a tokenizer (a word of its vocabulary, a special token, or a loaded embedding)."""
    if not isinstance(token, str) or not token.strip():
        raise ConfigError("token", token, "give the word the embedding is written as, e.g. 'easynegative'")
    if _BAD_TOKEN.search(token):
        raise ConfigError("token", token, "a prompt word cannot hold spaces or ( ) [ ] { } : | , \\: pass "
                          f"token={re.sub(_BAD_TOKEN, '_', token.strip())!r}")
    low = token.lower()
    for tok in tokenizers:
        vocab = tok.get_vocab()
        added = {t.lower() for t in tok.added_tokens_encoder}
        if low in added or f"{low}_1" in added or _embedding_base(low, added):
            raise ConfigError("token", token, "already a loaded embedding or special token: unload it first "
                              "(studio.unload_embedding) or choose another token")
        if token in vocab or low in vocab or f"{low}</w>" in vocab:
            raise ConfigError("token", token, "already a word of the tokenizer's vocabulary, so prompts using "
                              "it would change: choose another token, e.g. "
                              f"{token + '_embedding'!r}")
    return token


def _embedding_base(low: str, added: set[str]) -> bool:
    """Whether ``low`` reads as one of a loaded multi-vector word's extra tokens (``word_2``)."""
    base, sep, tail = low.rpartition("_")
    return bool(sep and tail.isdigit() and base in added)


# -- installing into a model -------------------------------------------------------------------------
def install(pipe: Any, token: str, parts: Sequence[tuple[Any, Any, Any]]) -> None:
    """Add ``token`` with its vectors to each (tokenizer, text_encoder, vectors) through diffusers'
    ``load_textual_inversion``; if any part fails, the parts done so far are taken out again."""
    done: list[tuple[Any, Any, Any]] = []
    try:
        for tokenizer, text_encoder, vectors in parts:
            rows, words = text_encoder.get_input_embeddings().weight.shape[0], len(tokenizer)
            # Grow the matrix first without transformers' mean resizing (a covariance of the whole
            # vocabulary, and a warning on stderr) for rows diffusers overwrites at once; diffusers'
            # own resize to the same size is then a no-op.
            text_encoder.resize_token_embeddings(len(tokenizer) + vectors.shape[0], mean_resizing=False)
            try:
                pipe.load_textual_inversion(vectors, token=token, tokenizer=tokenizer, text_encoder=text_encoder)
            except BaseException:
                if len(tokenizer) == words:  # nothing added: only the resize to undo
                    text_encoder.resize_token_embeddings(rows, mean_resizing=False)
                else:
                    done.append((tokenizer, text_encoder, vectors))
                raise
            done.append((tokenizer, text_encoder, vectors))
    except BaseException:
        for tokenizer, text_encoder, vectors in done:
            _remove(pipe, token, vectors.shape[0], tokenizer, text_encoder)
        raise


def uninstall(pipe: Any, token: str, num_vectors: int, parts: Sequence[tuple[Any, Any]]) -> None:
    """Take ``token`` (and its extra vectors' tokens) out of each (tokenizer, text_encoder)."""
    for tokenizer, text_encoder in parts:
        _remove(pipe, token, num_vectors, tokenizer, text_encoder)


def _remove(pipe: Any, token: str, num_vectors: int, tokenizer: Any, text_encoder: Any) -> None:
    tokens = [token] + [f"{token}_{i}" for i in range(1, num_vectors)]
    present = [t for t in tokens if t in tokenizer.added_tokens_encoder]
    if present:
        module = text_encoder.get_input_embeddings()
        requires_grad = module.weight.requires_grad
        pipe.unload_textual_inversion(tokens=present, tokenizer=tokenizer, text_encoder=text_encoder)
        # diffusers builds a new nn.Embedding (trainable); the encoder's was as the model left it
        text_encoder.get_input_embeddings().weight.requires_grad_(requires_grad)
        text_encoder.config.vocab_size = text_encoder.get_input_embeddings().weight.shape[0]


def tokens_in(tokenizer: Any, texts: Iterable[str], tokens: Iterable[str]) -> list[str]:
    """Which of the loaded embedding ``tokens`` the ``texts`` write (matched as the tokenizer
    matches them: case-insensitively, syntax such as ``(word:1.2)`` around them)."""
    tokens = list(tokens)
    if not tokens:
        return []
    ids = {tokenizer.convert_tokens_to_ids(t): t for t in tokens}
    seen: set[str] = set()
    for text in texts:
        if text:
            for i in tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids:
                if i in ids:
                    seen.add(ids[i])
    return [t for t in tokens if t in seen]
