"""Which identity scorer measures a set of pictures: `get_scorer`.

By default (``None`` or ``"auto"``) the best one available *without a download*:

1. CCIP, when its files (deepghs/ccip_onnx, ``ccip-caformer-24-randaug-pruned``) are in the local
   Hugging Face cache: it was trained for anime character identity;
2. CLIP-I, when openai/clip-vit-large-patch14 is in the cache: a generic similarity;
3. mini's own scorer, shipped in the package: always there, but trained on mini's world only.

The choice and the reason are logged, and each report names its scorer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import Scorer

log = logging.getLogger(__name__)

NAMES = ("auto", "ccip", "clip", "mini")
EXPECTED = ("'auto' (or None), 'ccip', 'clip', 'mini', a folder holding CCIP's model_feat.onnx, "
            "model_metrics.onnx and metrics.json, or a Scorer")
MINI_MODELS = ("mini",)


def get_scorer(scorer: Any = None, *, model: str | None = None) -> Scorer:
    """The identity scorer ``scorer`` names (see the module's docstring for the automatic choice).

    ``scorer``: None or "auto", "ccip" (from the local hub cache), "clip" (CLIP-I, from the local
    hub cache), "mini", a folder holding CCIP's files, or a `Scorer` (returned as it is).
    ``model``: the model whose pictures are scored (e.g. ``studio.model_id``); when the automatic
    choice falls back to mini's scorer for another model, a warning says its numbers only mean
    something on mini-world pictures."""
    if isinstance(scorer, Scorer):
        log.info("identity scorer: %s (given)", scorer.describe())
        return scorer
    if scorer is not None and not isinstance(scorer, (str, Path)):
        raise ConfigError("scorer", scorer, EXPECTED)
    name = "auto" if scorer is None else str(scorer).strip().lower()
    if isinstance(scorer, Path) or (name not in NAMES and _looks_like_path(str(scorer))):
        return _chosen(_ccip(folder=scorer), f"CCIP files from the folder {str(scorer)!r}")
    if name not in NAMES:
        raise ConfigError("scorer", scorer, EXPECTED)
    if name == "ccip":
        _require_cached_ccip()
        return _chosen(_ccip(), "asked for; its files are in the local hub cache")
    if name == "clip":
        return _chosen(_clip(required=True), "asked for; openai/clip-vit-large-patch14 is in the local hub cache")
    if name == "mini":
        return _chosen(_mini(), "asked for")
    return _auto(model)


def _auto(model: str | None) -> Scorer:
    from .ccip import DEFAULT_MODEL, cached_folder

    if cached_folder(DEFAULT_MODEL) is not None:
        return _chosen(_ccip(), f"automatic: CCIP's {DEFAULT_MODEL} files are in the local hub cache")
    clip = _clip(required=False)
    if clip is not None:
        return _chosen(clip, "automatic: CCIP's files are not cached, CLIP-L's are")
    chosen = _chosen(_mini(), "automatic: neither CCIP's nor CLIP-L's files are in the local hub cache")
    if model is not None and str(model) not in MINI_MODELS:
        log.warning("identity scores of %r come from mini's scorer, which was trained on mini's world only: "
                    "its numbers only mean something on mini-world pictures. For other models download CCIP "
                    "(huggingface-cli download deepghs/ccip_onnx --include 'ccip-caformer-24-randaug-pruned/*')",
                    str(model))
    return chosen


def _looks_like_path(value: str) -> bool:
    value = value.strip()
    return bool(value) and ("/" in value or "\\" in value or value.startswith((".", "~")) or Path(value).exists())


def _require_cached_ccip() -> None:
    from ..errors import ModelLoadError
    from .ccip import DEFAULT_MODEL, SETUP, cached_folder

    if cached_folder(DEFAULT_MODEL) is None:
        raise ModelLoadError(f"scorer='ccip': CCIP's {DEFAULT_MODEL!r} files are not in the local hub cache "
                             f"(nothing is downloaded implicitly): {SETUP.format(model=DEFAULT_MODEL)}")


def _ccip(folder: Any = None) -> Scorer:
    from .ccip import CcipScorer

    return CcipScorer(folder=folder, field="scorer")


def _clip(required: bool) -> Scorer | None:
    from ..errors import ModelLoadError
    from .clip import DEFAULT_EMBEDDER, ClipScorer, clip_available

    if clip_available(DEFAULT_EMBEDDER):
        return ClipScorer(DEFAULT_EMBEDDER)
    if required:
        raise ModelLoadError(f"scorer='clip': {DEFAULT_EMBEDDER} is not in the local hub cache (nothing is "
                             "downloaded implicitly): download it once, or use scorer='mini' or a CCIP folder")
    return None


_MINI: list[Scorer] = []  # the shipped scorer, loaded once per process


def _mini() -> Scorer:
    from .mini_scorer import MiniScorer

    if not _MINI:
        _MINI.append(MiniScorer())
    return _MINI[0]


def _chosen(scorer: Scorer, why: str) -> Scorer:
    log.info("identity scorer: %s (%s)", scorer.describe(), why)
    return scorer
