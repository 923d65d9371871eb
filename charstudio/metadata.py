"""The PNG recipe's old import path: it lives in `charstudio.recipe.metadata`."""

from __future__ import annotations

from .recipe.metadata import (
    PARAMETERS_KEY,
    RECIPE_KEY,
    format_parameters,
    hires_fields,
    parse_parameters,
    png_info,
    read_recipe,
)

__all__ = ["PARAMETERS_KEY", "RECIPE_KEY", "format_parameters", "hires_fields", "parse_parameters", "png_info",
           "read_recipe"]
