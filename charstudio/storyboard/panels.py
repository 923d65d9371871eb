"""One panel's recipe, and scoring each character in it against its card's anchor.

A character's words are the cast's (`charstudio.cast.expand_prompt`, for the studio's model
family): the card's trigger, description and traits, in the named wardrobe outfit (else its
``default``) and with the named expression (one of the card's ``expressions``); the recipe's
``cast`` field records them, so a panel's PNG re-runs without the cards. When the panel has a
setting, the card's ``background`` trait is left out (the setting replaces it).

A panel of one character is that character's words, the setting and (big models) the shot's
words, with the card's LoRA and embeddings. A panel of two is a regional prompt
(`charstudio.recipe.regions`): the left half holds the first character's words, the right half
the second's (each with the setting), over a two-person pose, and each card's LoRA goes in its
own region where regions take LoRAs; the scene prompt names both and the setting.

**Anchors and identity.** Each card gets one anchor picture: the card itself, drawn whole in
``standing_front`` at the card's seed (the picture a character sheet anchors on). Every panel's
characters are scored against their own card's anchor: the character's region of the panel (the
whole picture, or its half) is cropped and embedded by the identity scorer
(`charstudio.identity`), on the identity-score scale (1 - the scorer's difference). A card with a
``palette`` is checked in that crop too (`identity.palette.check_palette`). A panel passes when
every character is at or above the bar and passes its checks.

The sheets' `IdentityRun` anchors on a picture of the same set and re-rolls views one character
at a time; a panel holds up to two characters, each with its own anchor, and passes only when both
do, so the storyboard keeps its own small loop over the same scorer, bar and checks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Any

from ..errors import CharstudioError, ConfigError
from ..recipe.regions import box_pixels
from .script import SHOTS, Cast, Panel, Script

if TYPE_CHECKING:
    from ..character import Character
    from ..studio import Studio

log = logging.getLogger(__name__)

SMALL_MODEL_SIZE = 256  # below it a model draws whole figures only (as for expression sheets)
ANCHOR_POSE = "standing_front"


def load_cast(script: Script) -> dict[str, Character]:
    """The cards the script names, loaded; every panel's outfits and expressions are checked
    against them (`expand_panel`). An error names the panel and the character's field."""
    from ..cast import load_character

    cards: dict[str, Any] = {}
    for i, panel in enumerate(script.panels):
        for k, c in enumerate(panel.characters):
            if c.name not in cards:
                cards[c.name] = load_character(c.name, field=f"panels[{i}].characters[{k}]")
        expand_panel(script, i, cards, None)
    return cards


def check_poses(script: Script) -> None:
    """Every panel's pose exists and has the right number of people (before any drawing)."""
    for i, panel in enumerate(script.panels):
        try:
            _people(panel, 64, 64)
        except ConfigError as err:
            raise ConfigError(f"panels[{i}].pose", panel.pose, err.expected) from None


def mention(cast: Cast) -> str:
    """The character as an ``@name`` mention (`charstudio.cast.expand`): ``@rin:school:smiling``,
    ``@rin::smiling`` for an expression in the usual outfit."""
    text = "@" + cast.name
    if cast.outfit:
        text += ":" + cast.outfit
    if cast.expression:
        text += (":" if cast.outfit else "::") + cast.expression
    return text


def expand_panel(script: Script, index: int, cards: dict[str, Any], family: str | None) -> Any:
    """Panel ``index``'s characters expanded by the cast (`charstudio.cast.expand_prompt`, for
    ``family``): each card's words in its outfit and expression, its payload (LoRA, embeddings)
    and the recipe's ``cast`` record. The setting replaces the cards' ``background`` trait."""
    from ..cast import expand_prompt

    panel = script.panels[index]
    staged = {}
    for c in panel.characters:
        card = cards[c.name]
        if panel.setting and "background" in card.traits:
            card = dataclasses.replace(card, traits={k: v for k, v in card.traits.items() if k != "background"})
        staged[c.name] = card
    try:
        return expand_prompt(", ".join(mention(c) for c in panel.characters), family=family, cards=staged)
    except ConfigError as err:
        name, _, kind = err.field.lstrip("@").partition(":")
        k = next((k for k, c in enumerate(panel.characters) if c.name == name), 0)
        where = f"panels[{index}].characters[{k}]" + (f".{kind}" if kind in ("outfit", "expression") else "")
        raise ConfigError(where, err.value, err.expected) from None


def panel_size(studio: Studio, people: int) -> tuple[int, int]:
    """(width, height): the model's square for one character; twice as wide (small models) or
    3:2 (big ones) for two."""
    side = int(studio.default_size)
    if people == 1:
        return side, side
    return (2 * side, side) if side < SMALL_MODEL_SIZE else (side * 3 // 2 // 8 * 8, side)


def _people(panel: Panel, width: int, height: int) -> list[Any]:
    """The panel's people as poses fitted to width x height, left to right."""
    from ..pose import load_pose
    from ..pose.compose import PoseGroup, load_people, side_by_side

    n = len(panel.characters)
    if n == 1:
        one = panel.pose[0] if isinstance(panel.pose, list) else panel.pose
        return [load_pose(one or ANCHOR_POSE).fit(width, height)]
    if isinstance(panel.pose, str):
        group = load_people(panel.pose)
        people = group.people if isinstance(group, PoseGroup) else [group]
        if len(people) != n:
            raise ConfigError("pose", panel.pose, f"a pose of {n} people (this one has {len(people)}), or a list "
                                                  f"of {n} poses placed side by side")
        group = PoseGroup([p for p in people], people[0].canvas_width, people[0].canvas_height).fit(width, height)
        return sorted(group.people, key=lambda p: p.bbox()[0])
    poses = panel.pose or [ANCHOR_POSE] * n
    return side_by_side(*poses, width=width, height=height).people


def shot_box(people: list[Any], shot: str, width: int, height: int) -> tuple[float, float, float, float] | None:
    """The shot's box (left, top, right, bottom) around all the people, at the picture's aspect;
    None for a full shot."""
    down_to = SHOTS[shot]["down_to"]
    if down_to is None:
        return None
    boxes = [p.portrait_box(aspect=width / height / len(people), down_to=down_to) for p in people]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    w = max(x1 - x0, (y1 - y0) * width / height)
    h = w * height / width
    if h > height:
        h, w = float(height), float(width)
    cx = (x0 + x1) / 2
    left = min(max(cx - w / 2, 0.0), width - w)
    top = min(max(y0, 0.0), height - h)
    return left, top, left + w, top + h


def panel_config(studio: Studio, script: Script, index: int, cards: dict[str, Any], *, seed: int | None,
                 steps: int | None, settings: dict[str, Any]) -> tuple[Any, list[dict], Any]:
    """Panel ``index``'s recipe, its characters ({name, label, box} each: the region scored) and the
    page's crop box (None: the whole picture)."""
    from ..pose.compose import PoseGroup
    from ..recipe.regions import REGION_KEYS

    panel = script.panels[index]
    n = len(panel.characters)
    width, height = panel_size(studio, n)
    people = _people(panel, width, height)
    box = shot_box(people, panel.shot, width, height)
    small = int(studio.default_size) < SMALL_MODEL_SIZE
    crop = box if small else None
    shot_words = "" if small else SHOTS[panel.shot]["words"]
    if box is not None and not small:  # the model draws the framing: the pose cropped to the shot
        people = [p.crop(box).fit(width, height) for p in people]
    pose = people[0] if n == 1 else PoseGroup(people, width, height)

    # The cast's words and payloads: embeddings loaded, each card's LoRA in its region (or the picture's).
    expansion = expand_panel(script, index, cards, studio.family.name)
    for name in expansion.embeddings:
        studio.load_embedding(name)
    loaded = {path: studio.lora_set.load_off(path) for path in expansion.loras}
    loras = dict(studio.active_loras)
    negatives = [getattr(cards[c.name], "negative_prompt", "") for c in panel.characters]
    own_style = getattr(cards[panel.characters[0].name], "style", None) if n == 1 else None
    common = dict(seed=seed, num_inference_steps=steps, width=width, height=height, pose=pose,
                  style=script.style if script.style is not None else own_style,
                  negative_prompt=", ".join(dict.fromkeys(x for x in negatives if x)) or None,
                  cast=expansion.record, **settings)
    extra = [w for w in (panel.setting, shot_words) if w]
    if n == 1:
        name = panel.characters[0].name
        loras.update({loaded[k]: w for k, w in expansion.card_loras(name).items()})
        chars = [{"name": name, "label": panel.characters[0].label(), "box": [0, 0, width, height]}]
        config = studio.make_config(", ".join([expansion.words(name), *extra]), loras=loras, **common)
        return config, chars, crop
    regions, chars = expansion.regions(["left", "right"]), []
    for region, c in zip(regions, panel.characters):
        region["prompt"] = ", ".join([region["prompt"], *extra])
        own = {loaded[k]: w for k, w in region.pop("loras", {}).items()}
        if own and "loras" in REGION_KEYS:
            region["loras"] = own
        elif own:
            loras.update(own)
            log.warning("storyboard: %s's LoRA acts on the whole of panel %d (regions take no LoRA here)",
                        c.name, index + 1)
        x0, y0, x1, y1 = box_pixels(region, width, height)
        chars.append({"name": c.name, "label": c.label(), "box": [x0, y0, x1, y1]})
    who = " and ".join(cards[c.name].description or c.name for c in panel.characters)
    config = studio.make_config(", ".join([who, *extra]), regions=regions, loras=loras, **common)
    return config, chars, crop


def anchor_config(studio: Studio, card: Any, *, seed: int | None, steps: int | None, settings: dict[str, Any]) -> Any:
    """The card's anchor: the card itself, whole, in `ANCHOR_POSE`, at its own seed (else ``seed``)."""
    side = int(studio.default_size)
    return studio.make_config(card, pose=ANCHOR_POSE, seed=card.seed if card.seed is not None else seed,
                              num_inference_steps=steps, width=side, height=side, **settings)


class PanelScorer:
    """Scores a panel's characters against their cards' anchors (see the module docstring)."""

    def __init__(self, scorer: Any, anchors: dict[str, Any], cards: dict[str, Any], bar: float | None):
        self.scorer, self.bar, self.cards = scorer, bar, cards
        self.anchor_embeddings: dict[str, Any] = {}
        if scorer is not None and anchors:
            import numpy as np

            names = list(anchors)
            emb = np.asarray(scorer.embed([anchors[n] for n in names]))
            self.anchor_embeddings = {n: emb[k:k + 1] for k, n in enumerate(names)}

    def score(self, image: Any, recipe: Any, chars: list[dict]) -> dict[str, Any]:
        """{"scores": {name: score or None}, "checks": {name: {...}}, "passed": bool}."""
        crops = [image.crop(tuple(c["box"])) for c in chars]
        scores: dict[str, float | None] = {c["name"]: None for c in chars}
        if self.scorer is not None and self.anchor_embeddings:
            import numpy as np

            emb = np.asarray(self.scorer.embed(crops))
            for k, c in enumerate(chars):
                anchor = self.anchor_embeddings.get(c["name"])
                if anchor is not None:
                    diff = float(np.asarray(self.scorer.difference(emb[k:k + 1], anchor))[0, 0])
                    scores[c["name"]] = round(1.0 - diff, 6)
        checks = {c["name"]: self._palette(crop, recipe, k, c) for k, (crop, c) in enumerate(zip(crops, chars))}
        checks = {k: v for k, v in checks.items() if v}
        failed = any(v.get("failed") for v in checks.values())
        low = self.bar is not None and any(s is not None and s < self.bar for s in scores.values())
        return {"scores": scores, "checks": checks, "passed": not (failed or low)}

    def _palette(self, crop: Any, recipe: Any, k: int, char: dict) -> dict[str, Any]:
        card = self.cards.get(char["name"])
        palette = getattr(card, "palette", None)
        if not palette or not getattr(recipe, "pose", None):
            return {}
        try:
            from ..identity.palette import check_palette
            from ..pose.compose import people_of

            people = sorted(people_of(recipe.pose), key=lambda p: p.bbox()[0])
            pose = people[k].fit(recipe.width, recipe.height).crop(char["box"])
            return check_palette(crop, pose, palette).to_dict()
        except (CharstudioError, ValueError, KeyError, IndexError, ImportError) as err:
            log.warning("storyboard: the palette check of %s was skipped (%s)", char["name"], err)
            return {}


def rank(record: dict[str, Any]) -> tuple:
    """How good a try is: passing first, then the lowest character score (higher is better)."""
    values = [s for s in record["scores"].values() if s is not None]
    return (bool(record["passed"]), min(values) if values else -math.inf)
