"""How alike a set of pictures is: mean pairwise cosine similarity of CLIP image embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, ModelLoadError

DEFAULT_EMBEDDER = "openai/clip-vit-large-patch14"


def load_embedder(name_or_path: str = DEFAULT_EMBEDDER, device: Any = None, download: bool = True) -> Any:
    """A CLIPVisionModelWithProjection from a local folder or the local hub cache; a clear
    `ModelLoadError` when it is not there.

    It downloads only with `download=True` and without ``HF_HUB_OFFLINE=1``: work that merely
    *reports* a score (a sheet) must not stall on a 1.7 GB download or on network retries.
    """
    from ..models.loading import hub_offline

    offline = not download or hub_offline()
    problem = f"CLIP image embedder {name_or_path!r} is not available locally or from the hub"
    advice = "download it once, or pass embedder= a loaded CLIPVisionModelWithProjection or a local folder"
    if offline and not Path(name_or_path).is_dir():
        from huggingface_hub import try_to_load_from_cache

        # Answer at once instead of letting from_pretrained walk every fallback (seconds).
        if not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
            raise ModelLoadError(f"{problem} (HF_HUB_OFFLINE=1 and it is not in the cache); {advice}")
    from transformers import CLIPVisionModelWithProjection

    try:
        model = CLIPVisionModelWithProjection.from_pretrained(name_or_path, local_files_only=offline)
    except Exception as err:  # OSError / EnvironmentError variants for "not found"
        raise ModelLoadError(f"{problem} ({type(err).__name__}); {advice}") from None
    return model.to(device) if device is not None else model


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
