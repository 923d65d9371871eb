"""How alike a set of pictures is: mean pairwise cosine similarity of CLIP image embeddings.

The code moved to `charstudio.identity.clip` (CLIP-I, one of the identity scorers); these names
stay importable from here.
"""

from __future__ import annotations

from ..identity.clip import (  # noqa: F401  (re-exported: the sheets, the CLI and tests import them from here)
    ADVICE,
    CLIP_MODEL_TYPES,
    DEFAULT_EMBEDDER,
    FIELD,
    FOLDER_ADVICE,
    WEIGHT_FILES,
    check_embedder_folder,
    embed_images,
    load_embedder,
    score,
)

__all__ = ["ADVICE", "CLIP_MODEL_TYPES", "DEFAULT_EMBEDDER", "FIELD", "FOLDER_ADVICE", "WEIGHT_FILES",
           "check_embedder_folder", "embed_images", "load_embedder", "score"]
