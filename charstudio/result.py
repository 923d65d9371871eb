"""`Result`: generated images together with the exact recipe of each one."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import GenerationConfig
from .io_utils import next_free_path, writing_into
from .metadata import read_recipe
from .provenance.png import parent_for, write_png

log = logging.getLogger(__name__)


def slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].rstrip("-") or "image"


@dataclass
class Result:
    """Images plus one `GenerationConfig` per image that rebuilds it with `studio.run(recipe)`."""

    images: list[Any]
    recipes: list[GenerationConfig]
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. latents, traces, scores

    def __post_init__(self) -> None:
        if len(self.images) != len(self.recipes):
            raise ValueError(f"images ({len(self.images)}) and recipes ({len(self.recipes)}) must pair up")

    @property
    def image(self) -> Any:
        """The first image (most runs make one)."""
        return self.images[0]

    @property
    def recipe(self) -> GenerationConfig:
        return self.recipes[0]

    def __len__(self) -> int:
        return len(self.images)

    def save(self, directory: str | os.PathLike, *, prefix: str | None = None, overwrite: bool = False) -> list[Path]:
        """Write each image as PNG with its recipe in the metadata and its C2PA manifest (an edit's
        names its parent picture: `provenance.png.write_png`); returns the paths.

        Names are `<prefix>-<seed>.png`; an existing file is never replaced unless `overwrite`,
        a free name (`-1`, `-2`, ...) is taken instead.
        """
        with writing_into(directory) as out:
            paths = []
            for i, (image, recipe) in enumerate(zip(self.images, self.recipes)):
                stem = f"{slug(prefix or recipe.character or recipe.prompt[:30])}-{recipe.seed}"
                path = out / f"{stem}.png" if overwrite else next_free_path(out, stem, ".png")
                write_png(path, image, recipe, parent=parent_for(self.extras, i), overwrite=overwrite)
                log.info("saved %s", path)
                paths.append(path)
            return paths

    @classmethod
    def from_png(cls, path: str | os.PathLike, family: Any = None) -> "Result":
        """Read a saved image and its recipe (ours, or an A1111 `parameters` chunk; `family`, the
        ModelFamily it is for, says how A1111's "Clip skip" reads: `studio.family`)."""
        image, recipe = read_recipe(path, family)
        return cls([image.convert("RGB")], [recipe], {"path": str(path)})

    def grid(self, cols: int | None = None, labels: list[str] | None = None) -> Any:
        """All images in one picture, optionally with a label under each."""
        from .imaging import image_grid

        return image_grid(self.images, cols=cols, labels=labels)

    def _repr_png_(self) -> bytes:  # shows the images in a notebook cell
        import io

        buf = io.BytesIO()
        (self.images[0] if len(self.images) == 1 else self.grid()).save(buf, format="PNG")
        return buf.getvalue()
