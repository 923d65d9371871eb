"""The one PNG writer: every picture charstudio saves goes through `write_png`.

It writes the recipe's text chunks (A1111 ``parameters`` and the ``charstudio`` JSON:
`recipe.metadata.png_info`), any extra text chunks (a sheet's identity line, an interpolation
frame's recipe), and the C2PA manifest (`credentials.sign_png`; a ``caBX`` chunk beside the text
chunks, which PIL, A1111 and sd-parsers still read), then moves the file into place in one step
(`io_utils.atomic_write`): an existing file is never replaced unless ``overwrite``.

The invisible watermark is in the pixels already (the run puts it there); PNG keeps them exactly.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from ..io_utils import atomic_write
from .credentials import ParentPicture, current_credentials, sign_png

log = logging.getLogger(__name__)

# Result.extras key: the picture an edit started from (`parent_picture`), or a list of them, one
# per picture. Inpaint and the detail pass on an existing picture set it; `write_png`
# names it in the manifest as the parent ingredient.
PARENT_KEY = "parent"


def png_bytes(image: Any, recipe: Any = None, text: Mapping[str, str] | None = None) -> bytes:
    """The PNG file's bytes for `image` with `recipe`'s text chunks and the `text` ones (no manifest)."""
    from PIL.PngImagePlugin import PngInfo

    if recipe is not None:
        from ..recipe.metadata import png_info

        info = png_info(recipe)
    else:
        info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def write_png(path: str | os.PathLike, image: Any, recipe: Any = None, *, text: Mapping[str, str] | None = None,
              model: str | None = None, parent: Any = None, credentials: bool = True,
              overwrite: bool = False) -> Path:
    """Write `image` as a PNG at `path` with its recipe, the extra `text` chunks and a C2PA
    manifest (``credentials``; skipped with one warning when no certificate is set).

    ``model`` names the model in the manifest (default: the recipe's). ``parent``: the picture this
    one edits (a file path or a PIL image): the manifest records ``c2pa.edited`` with it as
    ingredient; None for a new picture (``c2pa.created``)."""
    dest = Path(path)

    def write(tmp: Path) -> None:  # encoded inside atomic_write: a full disk names `path`
        data = png_bytes(image, recipe, text)
        if credentials:
            data = sign_png(data, title=dest.name, model=model or getattr(recipe, "model", None), parent=parent)
        Path(tmp).write_bytes(data)

    return atomic_write(dest, write, overwrite=overwrite)


def parent_for(extras: Mapping[str, Any], index: int) -> Any:
    """The parent picture of picture `index` of a Result (its ``extras[PARENT_KEY]``), or None."""
    parent = extras.get(PARENT_KEY)
    if isinstance(parent, (list, tuple)):
        return parent[index] if index < len(parent) else None
    return parent


def parent_picture(source: Any) -> Any:
    """What an edit records as its parent (``Result.extras[PARENT_KEY]``): a picture file's name and
    bytes, read now (a path, or a Result read from a file); else the picture itself (a PIL image,
    or a Result's first picture)."""
    path = getattr(source, "extras", {}).get("path") if hasattr(source, "extras") else source
    if isinstance(path, (str, os.PathLike)) and Path(path).is_file():
        return ParentPicture.of_file(path)
    return source.images[0] if hasattr(source, "images") else source


def mark_text(recipe: Any) -> str:
    """The apps' small provenance mark for a picture in memory: 'watermarked' when its recipe
    recorded the watermark; 'credentials' when a certificate is set, so saving signs it."""
    marks = []
    if getattr(recipe, "watermark", False):
        marks.append("watermarked")
    try:
        if current_credentials() is not None:
            marks.append("credentials")
    except Exception as exc:  # a misconfigured certificate must not break the gallery; saving says why
        log.debug("no credentials mark: %s", exc)
    return " / ".join(marks) or "no watermark, no credentials"
