"""The `mini` model's training data: world characters drawn from the recipe's seed (picture,
OpenPose control image, caption), the stroke augmentation of the VAE phase, and the per-pixel
and per-latent-cell weights that make the figure count more than its flat background.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .train import MiniRecipe

log = logging.getLogger(__name__)


def sample_seed(recipe: MiniRecipe, i: int) -> int:
    return recipe.seed * 1_000_003 + i


def sample_attributes(recipe: MiniRecipe, i: int) -> Any:
    """The attributes of training sample ``i`` (the same draw `make_dataset` makes, without drawing)."""
    from .world import random_attributes

    return random_attributes(random.Random(sample_seed(recipe, i)))


def make_dataset(recipe: MiniRecipe) -> dict[str, np.ndarray]:
    """Pictures, control images and captions of ``recipe.samples`` world characters."""
    from .world import random_character, render

    images = np.zeros((recipe.samples, recipe.size, recipe.size, 3), np.uint8)
    controls = np.zeros_like(images)
    captions = []
    for i in range(recipe.samples):
        attrs, pose = random_character(sample_seed(recipe, i), recipe.size)
        images[i] = np.asarray(render(attrs, pose))
        controls[i] = np.asarray(pose.render(recipe.size, recipe.size))
        captions.append(attrs.caption())
        if i % 2000 == 0:
            log.info("data: %d/%d", i, recipe.samples)
    return {"images": images, "controls": controls, "captions": np.array(captions)}


def to_tensor(batch: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def add_strokes(images: np.ndarray, rng: np.random.Generator, share: float) -> np.ndarray:
    """A copy of an (N, H, W, 3) uint8 batch where about ``share`` of the pictures carry 1-3 thin
    striped strokes (1-3 px wide, 2-6 stripes, a saturated colour of any hue against any other)."""
    import colorsys

    from PIL import Image, ImageDraw

    out = images.copy()
    size = images.shape[1]
    for i in np.flatnonzero(rng.random(len(images)) < share):
        im = Image.fromarray(out[i])
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 4))):
            hsv = ((rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0)),
                   (rng.random(), rng.random(), rng.uniform(0.2, 1.0)))
            colours = [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(*v)) for v in hsv]
            start = rng.uniform(0, size, 2)
            angle = rng.uniform(0, 2 * np.pi)
            step = np.array([np.cos(angle), np.sin(angle)]) * rng.uniform(4, 20) * size / 64
            stripes, width = int(rng.integers(2, 7)), int(rng.choice([1, 2, 2, 3]))
            for k in range(stripes):
                a0, a1 = start + step * k / stripes, start + step * (k + 1) / stripes
                draw.line([tuple(a0), tuple(a1)], fill=colours[k % 2], width=width)
        out[i] = np.asarray(im)
    return out


def figure_mask(x: Any) -> Any:
    """1 where a picture (N, 3, H, W in [-1, 1]) differs from its top-left (background) colour."""
    background = x[:, :, :1, :1]
    return ((x - background).abs().sum(dim=1, keepdim=True) > 0.15).float()


def latent_weight(images: np.ndarray, latent_size: int, foreground_weight: float) -> Any:
    """Per-latent-cell loss weight: 1 + ``foreground_weight`` x the share of the cell's pixels
    that belong to the figure, normalised to mean 1 per picture (so the loss keeps its scale)."""
    import torch.nn.functional as F

    mask = figure_mask(to_tensor(images))
    w = 1.0 + foreground_weight * F.adaptive_avg_pool2d(mask, latent_size)
    return w / w.mean(dim=(1, 2, 3), keepdim=True)
