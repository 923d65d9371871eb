"""Expression sheets: one character with N facial expressions in one labelled grid.

An expression sheet is a character sheet (`charstudio.sheets.make_sheet`) in one pose, drawn
once per expression with that expression's words added to the prompt ("smiling, happy"). Every
picture shares the seed's noise and keeps reference attention to the first, so only the face
should change. The pose is by default a portrait (`portrait_pose`: the standing figure framed
from the head to the hips, so the face is drawn large), and the grid shows the head and
shoulders cropped from each picture (`Pose.portrait_box`) and scaled up to the picture's size.

Each picture's recipe holds its expression words (in the prompt) and its pose, so its PNG
re-runs it; the sheet's settings record the expressions, the pose and the crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..limits import check_unique, named_items
from ..sheets.sheet import SheetResult

if TYPE_CHECKING:
    from ..studio import Studio

DEFAULT_REFERENCE_STRENGTH = 0.5
DEFAULT_EXPRESSIONS = ("neutral", "smiling", "angry", "surprised", "sad", "embarrassed")
# An expression's prompt words (Danbooru-style tags, which anime models know); any other name
# is used as its own words ("winking").
EXPRESSION_WORDS: dict[str, str] = {
    "neutral": "neutral expression, closed mouth",
    "smiling": "smiling, happy",
    "laughing": "laughing, open mouth, closed eyes",
    "angry": "angry, frowning",
    "surprised": "surprised, open mouth, wide-eyed",
    "sad": "sad, teary eyes",
    "crying": "crying, tears",
    "embarrassed": "embarrassed, blushing",
    "smug": "smug, smirk",
    "scared": "scared, wide-eyed",
    "determined": "determined, serious",
    "sleepy": "sleepy, half-closed eyes",
}
PORTRAIT = "portrait"
PORTRAIT_WORDS = "upper body"  # added to every picture drawn in the portrait pose
# crop name -> how far down `Pose.portrait_box` frames
CROPS = {"portrait": "chest", "upper body": "hips"}
# Below this native size a model draws whole figures only (mini, tiny): pose=None then takes
# the whole standing figure, and the crop does the framing.
SMALL_MODEL_SIZE = 256


def portrait_pose() -> Any:
    """The library's standing figure framed from above the head to just below the hips (a
    square canvas): the pose an expression sheet draws by default."""
    from ..pose import load_pose

    front = load_pose("standing_front")
    return front.crop(front.portrait_box(down_to="hips"))


def resolve_expressions(expressions: Any = None, field: str = "expressions") -> list[tuple[str, str]]:
    """(label, prompt words) per expression: None (`DEFAULT_EXPRESSIONS`), names (a list or one
    comma-separated string; `EXPRESSION_WORDS` gives known names their words), ``(label, words)``
    pairs, or a dict {label: words}."""
    expected = (f"expression names ({', '.join(DEFAULT_EXPRESSIONS)}, or any words such as 'winking'), "
                "(label, words) pairs or a dict {label: words}")
    if isinstance(expressions, dict):
        expressions = list(expressions.items())
    items = named_items(field, expressions, DEFAULT_EXPRESSIONS, "expressions", expected)
    out: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, str):
            label = item.strip()
            words = EXPRESSION_WORDS.get(label.lower(), label)
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            label, words = item[0].strip(), item[1].strip()
        else:
            raise ConfigError(field, item, expected)
        if not label or not words:
            raise ConfigError(field, item, "a non-empty label and prompt words")
        out.append((label, words))
    check_unique(field, [label for label, _ in out], "expression")
    return out


@dataclass
class ExpressionSheet(SheetResult):
    """An expression sheet: a `SheetResult` whose grid shows ``crops`` (the face cropped from
    each picture and scaled up), when it was made with a crop. ``images`` are the whole
    pictures, each re-run by its recipe."""

    crops: list[Any] = field(default_factory=list)

    @property
    def grid_image(self) -> Any:
        """The labelled grid of the crops (the pictures when there are none)."""
        cells = self.crops or self.images
        n = len(cells)
        from ..imaging import image_grid

        return image_grid(cells, cols=n if n <= 4 else math.ceil(math.sqrt(n)), labels=self.labels)


def crop_box(pose_dict: dict, crop: str, width: int, height: int) -> tuple[int, int, int, int]:
    """The square box (left, top, right, bottom), in the pixels of a ``width`` x ``height``
    picture drawn in this recipe pose, that ``crop`` keeps."""
    from ..pose import Pose

    pose = Pose.from_dict(pose_dict).fit(width, height)
    x0, y0, x1, y1 = pose.portrait_box(aspect=1.0, down_to=CROPS[crop])
    side = max(1, int(round(min(x1 - x0, y1 - y0))))
    left, top = int(round(x0)), int(round(y0))
    left, top = min(max(left, 0), width - side), min(max(top, 0), height - side)
    return left, top, left + side, top + side


def expression_sheet(studio: Studio, character_or_prompt: Any, expressions: Any = None, *, pose: Any = None,
                     crop: str | None = "portrait", reference_strength: float = DEFAULT_REFERENCE_STRENGTH,
                     seed: int | None = None, **settings: Any) -> ExpressionSheet:
    """One character with N expressions: an `ExpressionSheet` labelled by expression.

    ``expressions``: see `resolve_expressions` (default neutral, smiling, angry, surprised, sad,
    embarrassed). ``pose``: "portrait" (`portrait_pose`, with "upper body" in the prompt), a
    library pose, a Pose or a pose dict; None takes "portrait", or "standing_front" on a model
    whose native size is under 256 px (mini draws whole figures only). ``crop``: "portrait"
    (head and shoulders), "upper body" (down to the hips) or None (whole pictures in the grid).
    All pictures share the seed's noise and reference attention to the first
    (``reference_strength``, 0 for none). ``settings`` go to `charstudio.sheets.make_sheet`
    (style, width, height, num_inference_steps, extra, scorer, min_identity, max_tries, ...): each
    expression is scored against the first and checked against the card's palette, and with
    ``min_identity`` the ones that drift are re-rolled.
    """
    from ..pose import Pose, load_pose
    from ..sheets import make_sheet

    # 1. Check the request before any model work.
    for own in ("poses", "labels", "extras"):
        if own in settings:
            raise ConfigError(own, settings[own], "no value: an expression sheet sets them from its expressions "
                                                  "and pose")
    chosen = resolve_expressions(expressions)
    if crop is not None and crop not in CROPS:
        raise ConfigError("crop", crop, f"one of {', '.join(map(repr, CROPS))} or None (whole pictures)")
    if pose is None:
        pose = PORTRAIT if int(studio.default_size) >= SMALL_MODEL_SIZE else "standing_front"
    portrait = isinstance(pose, str) and pose.strip().lower() == PORTRAIT
    if portrait:
        the_pose = portrait_pose()
    elif isinstance(pose, (str, dict, list, Pose)):
        the_pose = load_pose(pose)
    else:
        raise ConfigError("pose", type(pose).__name__, "'portrait', a library pose name, a Pose or a pose dict")
    if crop is not None:
        the_pose.portrait_box()  # a pose without a neck and head points cannot be cropped: say so now
    extras = [f"{words}, {PORTRAIT_WORDS}" if portrait else words for _, words in chosen]

    # 2. The sheet: one picture per expression, the first the reference.
    sheet = make_sheet(studio, character_or_prompt, [the_pose] * len(chosen), seed=seed,
                       reference_strength=reference_strength, labels=[label for label, _ in chosen],
                       extras=extras, **settings)

    # 3. The crops for the grid (the pictures stay whole; their recipes re-run them).
    crops, box = [], None
    if crop is not None:
        from PIL import Image

        first = sheet.recipes[0]
        box = crop_box(first.pose, crop, first.width, first.height)
        side = min(first.width, first.height)
        crops = [im.crop(box).resize((side, side), Image.LANCZOS) for im in sheet.images]
    settings_out = dict(sheet.settings, workflow="expressions", expressions=[label for label, _ in chosen],
                        expression_words=[words for _, words in chosen],
                        pose=pose if isinstance(pose, str) else None, crop=crop,
                        crop_box=list(box) if box is not None else None)
    return ExpressionSheet(sheet.images, sheet.recipes, sheet.extras, labels=sheet.labels, settings=settings_out,
                           score=sheet.score, control_images=sheet.control_images, crops=crops,
                           identity_record=sheet.identity_record)
