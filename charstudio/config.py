"""The recipe's old import path: `GenerationConfig` and its helpers live in `charstudio.recipe.config`."""

from __future__ import annotations

from .recipe.config import MAX_SEED, RECIPE_VERSION, GenerationConfig, check_size

__all__ = ["MAX_SEED", "RECIPE_VERSION", "GenerationConfig", "check_size"]
