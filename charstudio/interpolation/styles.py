"""Mixing styles: one picture conditioned on a weighted mix of style prompts, with a recipe
that re-runs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import ConfigError
from .maths import check_weights, mix_embeddings
from .render import encode_to_one_length

if TYPE_CHECKING:
    from ..studio import Studio


@dataclass
class StyleMix:
    """Images of one design under a weighted mix of styles, with what made them."""

    images: list[Any]
    recipe: Any  # the GenerationConfig of the heaviest style (seed, size, steps, ...)
    weights: dict[str, float]  # normalised


def mix_styles(studio: Studio, character_or_prompt: Any, styles: Mapping[str, float], **settings: Any) -> StyleMix:
    """Generate a design under an N-way weighted mix of style presets, mixed in embedding space.

    Each style's full prompt (and negative) is encoded, and the embeddings are averaged with
    the normalised weights. Weights must be >= 0 and not all zero; a weight-0 style has no
    effect at all, so {"anime": 1, "watercolor": 0} equals the anime style alone.
    """
    if not isinstance(styles, Mapping) or not styles:
        raise ConfigError("styles", styles, "a mapping of style name to weight, e.g. {'anime': 0.7, 'ink': 0.3}")
    weights = check_weights(styles, field_name="styles")
    names = list(styles)
    configs = [studio.make_config(character_or_prompt, style=s, **{**settings, "num_images": 1}) for s in names]
    main = configs[max(range(len(names)), key=lambda i: weights[i])]
    # The recipe carries every style's texts and weight, so it re-runs as the same mix.
    recipe = main.replace(style_mix=[{"style": s, "weight": w, "prompt": c.prompt, "negative_prompt": c.negative_prompt}
                                     for s, w, c in zip(names, weights, configs)])
    result = studio.run(recipe.replace(num_images=int(settings.get("num_images", 1) or 1)))
    return StyleMix(result.images, result.recipes[0], dict(zip(names, weights)))


def style_mix_embeddings(encoder: Any, style_mix: Sequence[Mapping[str, Any]], clip_skip: int | None) -> Any:
    """The `EncodedPrompt` of a recipe's style mix: each style's texts encoded to one chunk
    count, then every embedding (pooled ones too) averaged with the weights."""
    encoded = encode_to_one_length(encoder, [(part["prompt"], part["negative_prompt"]) for part in style_mix],
                                   clip_skip)
    weights = [part["weight"] for part in style_mix]
    return encoded[0].map(lambda *xs: mix_embeddings(xs, weights), *encoded[1:])
