"""CLIP-I: how alike pictures are by their CLIP image embeddings (1 - cosine), as a `Scorer`, with the
helpers that load the CLIP vision model (moved here from ``sheets/similarity.py``, which re-exports
them).

CLIP-I is a generic similarity: it rewards the same background and pose as much as the same face,
hair and outfit, so it is the fallback when CCIP's files are not available. Its same-character
threshold, `CLIP_THRESHOLD` (a difference of 0.20, identity score >= 0.80), comes from the
published CLIP-I figures of subject-driven generation (DreamBooth, Ruiz et al., CVPR 2023,
arXiv:2208.12242, Table 1): pairs of real photographs of one subject average 0.885, DreamBooth's
Stable Diffusion results 0.803 and Textual Inversion's 0.780. A score at or above 0.80 is as close
to the anchor as a successful personalisation gets; below it the character has likely drifted. It was
not measured here (no CLIP weights on this machine): treat it as a starting point and tune it with
``threshold=``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, ModelLoadError
from .base import Scorer

DEFAULT_EMBEDDER = "openai/clip-vit-large-patch14"
CLIP_THRESHOLD = 0.20


def load_embedder(name_or_path: str = DEFAULT_EMBEDDER, device: Any = None, download: bool = True) -> Any:
    """A CLIPVisionModelWithProjection from a local folder or the local hub cache; a clear
    `ModelLoadError` when it is not there, or when a folder is not such a model (saying what is
    wrong with it).

    It downloads only with `download=True` and without ``HF_HUB_OFFLINE=1``: work that merely
    *reports* a score (a sheet) must not stall on a 1.7 GB download or on network retries.
    """
    from ..models.hub import hub_offline

    name_or_path = str(name_or_path)
    folder = _local_folder(name_or_path)
    offline = not download or hub_offline()
    if folder is not None:
        _check_folder(name_or_path, folder)
    elif offline:
        from huggingface_hub import try_to_load_from_cache

        # Answer at once instead of letting from_pretrained walk every fallback (seconds).
        if not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
            why = "HF_HUB_OFFLINE=1 forbids downloading it" if hub_offline() else "it is not downloaded for this"
            raise ModelLoadError(f"{FIELD}={name_or_path!r} is not available locally (not in the cache, and "
                                 f"{why}): {ADVICE}")
    from transformers import CLIPVisionModelWithProjection

    try:
        model = CLIPVisionModelWithProjection.from_pretrained(folder or name_or_path, local_files_only=offline)
    except Exception as err:  # OSError / EnvironmentError variants for "not found", SafetensorError, ...
        if folder is not None:
            raise ModelLoadError(f"{FIELD}={name_or_path!r}: {_load_problem(err)}: {FOLDER_ADVICE}") from err
        raise ModelLoadError(f"{FIELD}={name_or_path!r} is not available locally or from the hub "
                             f"({type(err).__name__}): {ADVICE}") from None
    return model.to(device) if device is not None else model


FIELD = "embedder"
FOLDER_ADVICE = ("give a folder saved with CLIPVisionModelWithProjection.save_pretrained (or a CLIP model's, "
                 "e.g. a download of openai/clip-vit-large-patch14), or a hub id")
ADVICE = "download it once, or pass embedder= a loaded CLIPVisionModelWithProjection or a local folder"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
CLIP_MODEL_TYPES = ("clip", "clip_vision_model")


def check_embedder_folder(name: str) -> None:
    """Refuse a local embedder folder that is not a CLIP vision model (saying what is wrong), without
    loading it: for checks before a model loads. A hub id passes; it is looked up when used."""
    folder = _local_folder(str(name))
    if folder is not None:
        _check_folder(str(name), folder)


def _local_folder(name: str) -> Path | None:
    """The path `name` means on disk, or None for a hub id. A value that exists, or that cannot
    be a hub id ('org/name'), is a path."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return path
    return None


def _check_folder(name: str, path: Path) -> None:
    """Say what is wrong with a local embedder folder before transformers is asked to read it."""
    import json

    def broken(problem: str) -> ModelLoadError:
        return ModelLoadError(f"{FIELD}={name!r}: {problem}: {FOLDER_ADVICE}")

    if not path.exists():
        raise broken("no such folder")
    if not path.is_dir():
        raise broken("is a file, not a model folder (config.json with the weights beside it)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise broken("the folder has no config.json, so it is not a saved Hugging Face model")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise broken(f"its config.json cannot be read as JSON ({str(exc).splitlines()[0]})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in CLIP_MODEL_TYPES:
        raise broken(f"its config.json says model_type {model_type!r}, and a CLIP vision model "
                     f"({' or '.join(map(repr, CLIP_MODEL_TYPES))}) is needed")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise broken(f"the folder has config.json but no weights ({' or '.join(WEIGHT_FILES[::2])})")


def _load_problem(err: BaseException) -> str:
    """What went wrong reading a folder that looked right, without transformers' internal advice."""
    text = str(err).strip()
    if "ignore_mismatched_sizes" in text or "size mismatch" in text:
        return "its weights do not have the shapes its config.json describes (another model's weights?)"
    first = text.splitlines()[0] if text else ""
    return f"its weights cannot be read ({type(err).__name__}{': ' + first[:160] if first else ''})"


def embed_images(images: Sequence[Any], embedder: Any) -> Any:
    """L2-normalised CLIP image embeddings, one row per image (CLIP's resize, crop and normalisation)."""
    import torch
    from transformers import CLIPImageProcessor

    if callable(embedder) and not isinstance(embedder, torch.nn.Module):
        emb = torch.as_tensor(embedder(list(images)), dtype=torch.float32)
    else:
        size = int(embedder.config.image_size)
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        param = next(embedder.parameters())
        pixels = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = embedder(pixel_values=pixels.to(param.device, param.dtype))
        emb = (out.image_embeds if hasattr(out, "image_embeds") else out.pooler_output).float().cpu()
    return torch.nn.functional.normalize(emb, dim=-1)


def score(images: Sequence[Any], embedder: Any = None, download: bool = True) -> float:
    """Mean pairwise cosine similarity of the images' CLIP embeddings (1.0 = identical embeddings).

    ``embedder``: a CLIPVisionModelWithProjection (or any callable images -> (N, D) array), a
    model name/folder, or None for openai/clip-vit-large-patch14 when it is available locally.
    """
    images = list(images)
    if len(images) < 2:
        raise ConfigError("images", f"{len(images)} image(s)", "at least two images to compare")
    if embedder is None or isinstance(embedder, (str, Path)):
        embedder = load_embedder(str(embedder or DEFAULT_EMBEDDER), download=download)
    emb = embed_images(images, embedder)
    sim = emb @ emb.T
    n = len(images)
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


class ClipScorer(Scorer):
    """CLIP-I as a scorer: 1 - cosine of CLIP image embeddings.

    ``embedder``: a CLIPVisionModelWithProjection (or any callable images -> (N, D) array), a model
    name or folder, or None for openai/clip-vit-large-patch14, loaded on first use and never
    downloaded unless ``download=True``. ``threshold``: the difference at or below which two
    pictures count as the same character (default `CLIP_THRESHOLD`)."""

    name = "clip"

    def __init__(self, embedder: Any = None, threshold: float | None = None, download: bool = False,
                 device: Any = None):
        self.threshold = float(CLIP_THRESHOLD if threshold is None else threshold)
        self.download = download
        self.device = device
        self._embedder = embedder if embedder is not None else DEFAULT_EMBEDDER

    @property
    def embedder(self) -> Any:
        """The loaded embedder (a name or folder is loaded on first use)."""
        if isinstance(self._embedder, (str, Path)):
            self._embedder = load_embedder(str(self._embedder), device=self.device, download=self.download)
        return self._embedder

    def embed(self, images: Sequence[Any]) -> np.ndarray:
        images = list(images)
        if not images:
            return np.zeros((0, 0), np.float32)
        return embed_images(images, self.embedder).numpy().astype(np.float32)


def clip_available(name: str = DEFAULT_EMBEDDER) -> bool:
    """Whether the CLIP embedder can load without a download: a local folder, or in the hub cache."""
    folder = _local_folder(str(name))
    if folder is not None:
        return folder.is_dir() and (folder / "config.json").is_file()
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(str(name), "config.json"), str)
