"""Recipe building: a card or prompt, a style and the model's defaults resolved into a validated
`GenerationConfig`, without running anything."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Mapping

from ..cast.expand import has_mentions
from ..character import Character, compose_prompt, is_character, load_character
from ..recipe.config import MAX_SEED, GenerationConfig
from ..errors import ConfigError
from ..speed.draft import draft_settings, make_draft
from ..validation import check_text

if TYPE_CHECKING:
    from . import Studio


# Recipe fields make_config sets itself: given as settings they are refused with what to use instead.
_SET_HERE = {
    "prompt": "no value: the prompt comes from the first argument (a card name or a prompt); add words with extra=",
    "character": "no value: the card is the first argument (a card name, a .yaml path or a Character)",
    "model": "no value: the recipe records the studio's model; load another with Studio.from_pretrained",
}


def make_config(studio: Studio, character_or_prompt: str | Character | None = None, *, style: str | None = None,
                extra: str = "", seed: int | None = None, num_inference_steps: int | None = None,
                width: int | None = None, height: int | None = None, negative_prompt: str | None = None,
                pose: Any = None, loras: Mapping[str, float] | None = None, **settings: Any) -> GenerationConfig:
    """See `Studio.make_config`. ``loras``: the recipe's LoRA weights (name -> weight) instead of
    the studio's active ones; a card's LoRA is still added (at its card weight unless named here)."""
    for key in _SET_HERE:
        if key in settings:
            raise ConfigError(key, settings[key], _SET_HERE[key])
    # speed="draft" (draft_preset=NAME): the recipe is built as asked, then drafted (charstudio.speed.draft).
    draft, draft_preset = draft_settings(settings)
    if loras is not None and not isinstance(loras, Mapping):
        raise ConfigError("loras", loras, "a mapping of loaded adapter name to weight, e.g. {'k': 0.5}, or None "
                                          "for the studio's active LoRAs")
    # 1. Check the free-text inputs and resolve the card.
    if character_or_prompt is not None and not isinstance(character_or_prompt, (str, Character)):
        raise ConfigError("character_or_prompt", character_or_prompt,
                          "a card name, a prompt (str) or a Character, got " + type(character_or_prompt).__name__)
    check_text("style", style, "a style preset name", optional=True)
    check_text("extra", extra, "extra prompt words")
    check_text("negative_prompt", negative_prompt, "a negative prompt", optional=True)
    card = None
    if isinstance(character_or_prompt, Character):
        card = character_or_prompt
    elif isinstance(character_or_prompt, str) and is_character(character_or_prompt):
        card = load_character(character_or_prompt)

    # 2. The card's adapters: its LoRA goes into the recipe (loaded, off), its embeddings are loaded.
    given = loras is not None
    loras = dict(loras) if given else studio.active_loras
    if card is not None and card.lora:
        name = studio.lora_set.load_off(card.lora)
        if not (given and name in loras):
            loras[name] = float(card.lora_weight)
    for name in card.embeddings if card is not None else ():
        studio.load_embedding(name)  # a no-op when it is loaded already

    # 3. The prompt (its @names expanded, their cards' payloads loaded), and the embeddings it writes.
    prompt, negative = compose_prompt(card or character_or_prompt, style, extra)
    if negative_prompt is not None:
        negative = negative_prompt
    if has_mentions(prompt):
        prompt = _expand_cast(studio, prompt, settings, loras, given, width or studio.default_size,
                              height or studio.default_size, pose)
    settings["embeddings"] = studio.embedding_set.written(
        [prompt, negative, *(p.get(k, "") for p in settings.get("style_mix") or () if isinstance(p, dict)
                             for k in ("prompt", "negative_prompt"))])

    # 4. Defaults: the card's seed, the model's size, guidance and conditioning, the ControlNet's lines.
    if seed is None:
        seed = card.seed if card is not None and card.seed is not None else random.randint(0, MAX_SEED - 64)
    width = studio.default_size if width is None else width
    height = studio.default_size if height is None else height
    if pose is not None:
        pose = pose_dict(pose, width, height)
    _fill_defaults(studio, settings, width, height, posed=pose is not None)
    config = GenerationConfig(
        prompt=prompt, negative_prompt=negative, seed=seed,
        num_inference_steps=studio.default_steps if num_inference_steps is None else num_inference_steps,
        width=width, height=height, model=studio.model_id,
        character=card.name if card else None,
        style=style if style is not None else (card.style if card else None),
        loras=loras, pose=pose, **settings)
    return make_draft(studio, config, draft_preset) if draft else config


def _expand_cast(studio: Studio, prompt: str, settings: dict[str, Any], loras: dict[str, float], given: bool,
                 width: int, height: int, pose: Any) -> str:
    """Expand the prompt's @names for the studio's family (charstudio.cast): record them in the
    recipe's ``cast``, load each card's LoRA and embeddings, and give two or more cards a region
    each (cast.scene) unless the caller gave ``regions``. A card's LoRA goes into its region's
    ``loras`` when regions can hold them, else into the recipe's ``loras``."""
    from ..cast import expand_prompt
    from ..cast.scene import cast_boxes
    from ..recipe.regions import REGION_KEYS

    expansion = expand_prompt(prompt, family=studio.family.name)
    settings["cast"] = expansion.record
    for name in expansion.embeddings:
        studio.load_embedding(name)
    adapters = {path: studio.lora_set.load_off(path) for path in expansion.loras}
    regional = settings.get("regions") is None and len(expansion.names) > 1
    if regional:
        fitted = pose_dict(pose, width, height) if pose is not None else None
        regions = expansion.regions(cast_boxes(len(expansion.names), width, height, fitted))
        for region in regions:
            region_loras = {adapters[k]: w for k, w in region.pop("loras", {}).items()}
            if region_loras and "loras" in REGION_KEYS:
                region["loras"] = region_loras
            else:
                _add_lora(loras, given, region_loras)
        settings["regions"] = regions
    else:
        _add_lora(loras, given, {adapters[k]: w for k, w in expansion.loras.items()})
    return expansion.prompt


def _add_lora(loras: dict[str, float], given: bool, weights: dict[str, float]) -> None:
    """A card's LoRA at its card weight, unless the caller's ``loras`` named it."""
    for name, weight in weights.items():
        if not (given and name in loras):
            loras[name] = float(weight)


def _fill_defaults(studio: Studio, settings: dict[str, Any], width: int, height: int, *, posed: bool) -> None:
    if settings.get("guidance_scale") is None:
        settings["guidance_scale"] = studio.default_guidance
    if settings.get("guidance_rescale") is None:
        from ..models.family import V_PREDICTION_GUIDANCE_RESCALE

        # diffusers' ControlNet pipelines have no CFG rescale, so a posed picture goes without.
        rescale = studio.prediction_type == "v_prediction" and not posed
        settings["guidance_rescale"] = V_PREDICTION_GUIDANCE_RESCALE if rescale else 0.0
    for key, value in studio.family.conditioning_defaults(width, height).items():
        if settings.get(key) is None:
            settings[key] = value
    if settings.get("pose_lines") is None:
        settings["pose_lines"] = studio.pose_lines
    settings["quantize"] = studio.quantize  # what the weights were when drawn, like `model`


def pose_dict(pose: Any, width: int, height: int) -> dict:
    """A pose (name, file, Pose, several people) as the recipe's JSON, fitted to the picture."""
    from ..pose import Pose
    from ..pose.compose import load_people

    p = pose if isinstance(pose, Pose) else load_people(pose)  # several people: a PoseGroup
    p.require_keypoints(pose if isinstance(pose, str) else "no keypoints")
    return p.fit(width, height).to_dict()


def render_pose(config: GenerationConfig) -> Any:
    """The recipe's pose drawn as the ControlNet's control image at the recipe's size."""
    from ..pose.compose import load_people

    return load_people(config.pose).fit(config.width, config.height).render(config.width, config.height,
                                                                             lines=config.pose_lines)
