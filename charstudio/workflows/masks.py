"""Masks for inpainting and the detail pass, in pixels: box and region masks, mask pictures, soft
seams and pasting.

Seams are soft: `soft_mask` is 1 inside the mask and falls to 0 over ``seam`` pixels outside it,
so a paste leaves every pixel further out exactly as it was. The masks a recipe records (boxes,
named body regions of a pose, encoded mask pictures) are `charstudio.recipe.masks`; their names
stay importable from here.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..recipe.masks import (  # noqa: F401 - the recorded masks' names, importable from here as before
    DEFAULT_PADDING,
    DEFAULT_SEAM,
    REGIONS,
    Box,
    check_box,
    check_not_empty,
    decode_mask,
    encode_mask,
    mask_sha256,
    pad_box,
    parse_box,
    people,
    pose_boxes,
    region_boxes,
)


def box_mask(box: Box, width: int, height: int) -> np.ndarray:
    """A boolean ``height`` x ``width`` mask, True inside ``box``."""
    mask = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = box
    mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return mask


def region_mask(pose: Any, region: str, width: int, height: int, padding: float = DEFAULT_PADDING,
                field: str = "mask") -> np.ndarray:
    """The union of a region's boxes (every person's, see `pose_boxes`) as a boolean mask."""
    mask = np.zeros((height, width), dtype=bool)
    for box in pose_boxes(pose, region, width, height, padding, field):
        mask |= box_mask(box, width, height)
    return mask


# -- mask pictures -------------------------------------------------------------------------
def mask_from_picture(picture: Any, width: int, height: int, field: str = "mask") -> np.ndarray:
    """A boolean mask from a picture (PIL image, path or array): white (>= 128) is redrawn. It must
    be ``width`` x ``height`` and have at least one white pixel."""
    from PIL import Image

    if isinstance(picture, np.ndarray):
        arr = picture.astype(np.float64)
        if arr.ndim == 3:
            arr = arr.mean(axis=2)
        mask = arr >= (0.5 if picture.dtype == bool or arr.max() <= 1.0 else 128)
    else:
        if not isinstance(picture, Image.Image):
            from ..io_utils import open_image

            picture = open_image(picture, "mask picture")
        mask = np.asarray(picture.convert("L")) >= 128
    if mask.shape != (height, width):
        raise ConfigError(field, f"{mask.shape[1]}x{mask.shape[0]} picture",
                          f"a mask picture the size of the picture, {width}x{height}")
    check_not_empty(mask, field)
    return mask


# -- soft seams and pasting ----------------------------------------------------------------
def soft_mask(mask: np.ndarray, seam: int = DEFAULT_SEAM) -> np.ndarray:
    """A float mask: 1 inside ``mask``, then falling linearly to 0 over ``seam`` pixels outside
    it (by chessboard distance); exactly 0 further out."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if seam <= 0:
        return mask.astype(np.float32)
    distance = ndimage.distance_transform_cdt(~mask, metric="chessboard").astype(np.float32)
    return np.clip(1.0 - distance / (seam + 1), 0.0, 1.0)


def latent_mask(alpha: np.ndarray, factor: int) -> np.ndarray:
    """Which latent cells (``factor`` pixels a side) touch any pixel the paste takes from the
    redrawn picture (``alpha > 0``), as a boolean array at the latent size."""
    h, w = alpha.shape
    cells = (alpha > 0)[: h // factor * factor, : w // factor * factor]
    return cells.reshape(h // factor, factor, w // factor, factor).any(axis=(1, 3))


def paste(original: Any, redrawn: Any, alpha: np.ndarray) -> Any:
    """``redrawn`` where ``alpha`` is 1, ``original`` where it is 0, blended between; pixels with
    alpha 0 are the original's exactly."""
    from PIL import Image

    a = np.asarray(original.convert("RGB"), dtype=np.float32)
    b = np.asarray(redrawn.convert("RGB").resize(original.size), dtype=np.float32)
    w = alpha.astype(np.float32)[..., None]
    out = np.where(w > 0, np.clip(np.rint(b * w + a * (1.0 - w)), 0, 255), a)
    return Image.fromarray(out.astype(np.uint8), "RGB")


def picture_sha256(image: Any) -> str:
    """A digest of a picture's size and RGB pixels (the same for the file and the loaded image,
    whatever PNG encoder wrote it)."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()
