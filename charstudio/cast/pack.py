"""Outfit x expression packs: every outfit of a card's wardrobe in every one of its expressions,
as sprites a game engine reads.

A pack is a character sheet (`charstudio.sheets.make_sheet`) in one pose over outfits x
expressions: each sprite's outfit and expression words are that picture's extra prompt words,
and the card's own outfit words (its ``outfit``/``accessory``/... traits) give way to them.
Everything a sheet does, a pack does:

- the same noise: every sprite starts from the pack's seed;
- the same reference: reference attention (`charstudio.sheets.reference`) to the card's first
  ``references`` picture when it has one, else to the first sprite (the first outfit in the first
  expression);
- the identity score of every sprite against its outfit's first sprite (its row's first
  expression: an outfit is meant to change the look, and a scorer that sees clothes, as mini's
  does, would call every other outfit another character), and with ``min_identity`` (default
  "auto": the scorer's threshold) the sprites below it re-rolled with the next seed, all of a
  round in one batch, up to ``max_tries`` (`charstudio.sheets.identity`). Each outfit's first
  sprite is scored against the pack's first too (``identity_vs_first`` in index.json), for the
  record: it is never re-rolled;
- under ``accelerate launch`` the sprites are split over the processes in whole batches of
  ``studio.max_batch`` (`charstudio.sheets.distributed`): same seeds, the same files to the byte
  as one process (a pack of up to ``max_batch`` sprites stays in one process: lower it to split).

The folder (`PackResult.save`): one PNG per sprite, named ``<card>_<outfit>_<expression>.png``
(each part slugged: lowercase letters, digits and '-', so '_' only separates the three), all in
one flat folder beside ``grid.png`` (rows: outfits, columns: expressions, each sprite's identity
score under its label) and ``index.json`` (the pack's settings, and per sprite its name, outfit,
expression, file, size, seed, identity score and the sprite it was scored against, tries and
recipe). With reference attention from a
picture of the card's, that picture is kept as ``reference.png`` so the pack re-draws anywhere.
Each sprite's PNG holds its recipe; `redraw_sprite` re-draws one sprite from the folder with the
same reference, so it comes out as it did in the pack.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigError, InputFileError
from ..sheets.sheet import SheetResult
from .card import OUTFIT_TRAITS

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)

ALL = "all"
DEFAULT = "default"  # the outfit a card wears when its wardrobe names none
DEFAULT_POSE = "standing_front"  # sprites are whole figures; any library pose or Pose works
DEFAULT_REFERENCE_STRENGTH = 0.5  # as expression sheets (workflows.expressions)
FORMAT = "charstudio-pack/1"
REFERENCE_FILE = "reference.png"


@dataclass
class PackResult(SheetResult):
    """A pack: a `SheetResult` (images, recipes, identity record, settings) over outfits x
    expressions, row by row (all expressions of the first outfit first). ``sprites`` holds each
    picture's sprite name, outfit and expression; ``reference_image`` the card's reference
    picture, when one was used."""

    card: str = ""
    outfits: list[str] = field(default_factory=list)
    expressions: list[str] = field(default_factory=list)
    sprites: list[dict[str, str]] = field(default_factory=list)
    reference_image: Any = None
    JSON_NAME: ClassVar[str] = "index.json"

    def columns(self) -> int:
        return max(1, len(self.expressions))

    def file_names(self, lead: str = "") -> list[str]:
        return [f"{lead}{s['name']}.png" for s in self.sprites]

    def sprite(self, name: str) -> int:
        """The index of sprite ``name`` (``<card>_<outfit>_<expression>``)."""
        for i, s in enumerate(self.sprites):
            if s["name"] == name:
                return i
        raise ConfigError("sprite", name, f"one of {', '.join(s['name'] for s in self.sprites)}")

    def extra_pictures(self) -> dict[str, Any]:
        """``reference.png``, when the card's reference picture was used (`redraw_sprite` reads it)."""
        return {REFERENCE_FILE: self.reference_image} if self.reference_image is not None else {}

    def summary(self, files: list[str] | None = None) -> dict[str, Any]:
        """index.json: the pack's settings, then per sprite its name, outfit, expression, file,
        size, seed, identity score (against its outfit's first sprite, ``anchor``), tries and recipe."""
        record = self.identity_record
        report = self.identity
        scores = report.scores if report is not None and len(report.scores) == len(self.images) else None
        sprites, row = [], max(1, len(self.expressions))
        for i, (s, image, recipe) in enumerate(zip(self.sprites, self.images, self.recipes)):
            tries = record.tries[i] if record is not None and i < len(record.tries) else []
            anchor = i - i % row
            sprites.append({**s, "file": files[i] if files else None, "width": image.width, "height": image.height,
                            "seed": recipe.seed, "identity": scores[i] if scores else None,
                            "anchor": self.sprites[anchor]["name"],
                            "identity_vs_first": report.matrix[i][0] if scores else None,
                            "passed": s["name"] not in self.never_reached_names(),
                            "tries": len(tries) or 1, "recipe": recipe.to_dict()})
        return {"format": FORMAT, "card": self.card, "outfits": self.outfits, "expressions": self.expressions,
                "seed": self.settings.get("seed"), "grid": "grid.png", "files": files, "sprites": sprites,
                "settings": self.settings,
                "identity": record.to_dict() if record is not None else None}

    def never_reached_names(self) -> list[str]:
        """The sprite names of the pictures that never reached ``min_identity``."""
        by_label = {label: s["name"] for label, s in zip(self.labels, self.sprites)}
        return [by_label.get(label, label) for label in self.never_reached]


def _words(card: Any, kind: str, name: str) -> str:
    """An outfit's or expression's words from the card (`Character.outfit_words`,
    `Character.expression_words`); a card without a wardrobe wears its own outfit traits as "default"."""
    if kind == "outfit" and not card.wardrobe and name == DEFAULT:
        return ", ".join(v for k, v in card.traits.items() if k in OUTFIT_TRAITS and v.strip())
    return card.outfit_words(name) if kind == "outfit" else card.expression_words(name)


def resolve_outfits(card: Any, outfits: Any = ALL, field: str = "outfits") -> list[tuple[str, str]]:
    """(name, words) per outfit: "all" (the card's wardrobe in its order; a card without one wears
    its own outfit, named "default"), names (a list or one comma-separated string)."""
    known = list(card.wardrobe) or [DEFAULT]
    return [(name, _words(card, "outfit", name)) for name in _names(field, outfits, known, "outfit", card.name)]


def resolve_pack_expressions(card: Any, expressions: Any = ALL, field: str = "expressions") -> list[tuple[str, str]]:
    """(name, words) per expression: "all" (the card's expressions, else neutral, smiling, angry,
    surprised, sad, embarrassed), or names: the card's own, a built-in one
    (`workflows.expressions.EXPRESSION_WORDS`) or any words ("winking")."""
    from ..workflows.expressions import DEFAULT_EXPRESSIONS, EXPRESSION_WORDS

    own = card.expressions
    names = _names(field, expressions, list(own) or list(DEFAULT_EXPRESSIONS), "expression", card.name, free=True)
    return [(n, _words(card, "expression", n) if n in own else EXPRESSION_WORDS.get(n.lower(), n)) for n in names]


def _names(field: str, value: Any, known: list[str], what: str, card: str, free: bool = False) -> list[str]:
    from ..limits import check_unique, named_items

    if value is None or (isinstance(value, str) and value.strip().lower() == ALL):
        return list(known)
    expected = f"'all' or {what} names from the card {card!r}: {', '.join(known)}"
    names = [n.strip() if isinstance(n, str) else n for n in named_items(field, value, known, f"{what}s", expected)]
    for n in names:
        if not isinstance(n, str) or not n:
            raise ConfigError(field, n, expected)
        if not free and n not in known:
            raise ConfigError(field, n, expected)
    check_unique(field, names, what)
    return names


def _reference_picture(card: Any, reference: Any) -> Any:
    """The reference picture (RGB) the sprites attend to, or None (the first sprite is the reference)."""
    from PIL import Image

    if reference is None or (isinstance(reference, str) and reference == "first"):
        return None
    if isinstance(reference, Image.Image):
        return reference.convert("RGB")
    if isinstance(reference, str) and reference == "card":
        refs = list(getattr(card, "references", None) or [])
        if not refs:
            return None
        path = Path(refs[0]).expanduser()
        if not path.is_absolute() and card.source:
            path = Path(card.source).parent / path  # a card's references are relative to its file
        field = f"card {card.name}: references[0]"
    else:
        path, field = Path(reference), "reference"
    from ..io_utils import open_image

    if not path.is_file():
        raise InputFileError(f"{field}={str(path)!r}: no such picture; give an existing PNG or JPEG")
    return open_image(path, field).convert("RGB")


def make_pack(studio: Studio, card: Any, outfits: Any = ALL, expressions: Any = ALL, *, seed: int | None = None,
              pose: Any = DEFAULT_POSE, reference: Any = "card",
              reference_strength: float = DEFAULT_REFERENCE_STRENGTH, min_identity: float | str | None = "auto",
              max_tries: int = 4, out: str | os.PathLike | None = None, overwrite: bool = False, scorer: Any = None,
              **settings: Any) -> PackResult:
    """Draw every outfit x expression of ``card`` (a card name, a .yaml path or a `Character`).

    ``outfits``/``expressions``: "all" or names (see `resolve_outfits`, `resolve_pack_expressions`).
    ``seed``: every sprite's (None: the card's, else random, shared by all processes). ``pose``: a
    library pose name, Pose or pose dict (default standing_front). ``reference``: "card" (the
    card's first ``references`` picture, or the first sprite when it has none), "first" (the first
    sprite), a picture or a path; ``reference_strength`` 0 switches reference attention off.
    ``min_identity`` / ``max_tries`` / ``scorer``: the identity re-rolls (`make_sheet`).
    ``out``: a folder to save the pack to (`PackResult.save`; an existing pack needs ``overwrite``).
    ``settings`` go to `make_sheet` (style, width, height, num_inference_steps, use_lora, ...).
    """
    from ..character import load_character
    from ..limits import check_count
    from ..pose import load_pose
    from ..result import slug
    from ..sheets import make_sheet

    # 1. Check the request before any model work.
    for own in ("poses", "labels", "extras", "reference_image", "same_noise"):
        if own in settings:
            raise ConfigError(own, settings[own], "no value: a pack sets it from its outfits, expressions, pose "
                                                  "and reference")
    the_card = load_character(card, field="card")
    chosen_outfits = resolve_outfits(the_card, outfits)
    chosen_expressions = resolve_pack_expressions(the_card, expressions)
    check_count("outfits x expressions", len(chosen_outfits) * len(chosen_expressions), what="sprites")
    the_pose = load_pose(pose)
    picture = _reference_picture(the_card, reference) if reference_strength else None

    # 2. The sprites, row by row: the card without its own outfit words, each sprite's words as extras.
    base = dataclasses.replace(the_card, traits={k: v for k, v in the_card.traits.items() if k not in OUTFIT_TRAITS})
    sprites, labels, extras = [], [], []
    for outfit, outfit_words in chosen_outfits:
        for expression, expression_words in chosen_expressions:
            sprites.append({"name": f"{slug(the_card.name)}_{slug(outfit)}_{slug(expression)}", "outfit": outfit,
                            "expression": expression})
            labels.append(f"{outfit} / {expression}")
            extras.append(", ".join(w for w in (outfit_words, expression_words) if w))
    from ..limits import check_unique

    check_unique("outfits x expressions", [s["name"] for s in sprites], "sprite name")

    # 3. The sheet: same seed, same reference, identity scores and re-rolls, split over processes.
    row = len(chosen_expressions)
    sheet = make_sheet(studio, base, [the_pose] * len(sprites), seed=seed, same_noise=True,
                       reference_strength=reference_strength, reference_image=picture, labels=labels,
                       anchors=[i - i % row for i in range(len(sprites))],
                       extras=extras, scorer=scorer, min_identity=min_identity, max_tries=max_tries, **settings)
    # The files do not say how many processes drew them: a pack is the same from any number.
    log.info("pack of %d sprites drawn by %d process(es)", len(sprites), sheet.settings.pop("processes", 1))
    pack_settings = dict(sheet.settings, workflow="pack", character=the_card.name,
                         outfits={o: w for o, w in chosen_outfits}, expressions={e: w for e, w in chosen_expressions},
                         pose=pose if isinstance(pose, str) else None,
                         reference=(REFERENCE_FILE if picture is not None else
                                    sprites[0]["name"] if reference_strength else None))
    result = PackResult(sheet.images, sheet.recipes, sheet.extras, labels=sheet.labels, settings=pack_settings,
                        score=sheet.score, control_images=sheet.control_images, identity_record=sheet.identity_record,
                        card=the_card.name, outfits=[o for o, _ in chosen_outfits],
                        expressions=[e for e, _ in chosen_expressions], sprites=sprites, reference_image=picture)
    if out is not None:
        from ..sheets.distributed import distributed_state, is_main

        if is_main(distributed_state()):  # every process holds the pack; one writes it
            result.save(out, overwrite=overwrite, field="out")
    return result


def read_index(folder: str | os.PathLike) -> dict[str, Any]:
    """A saved pack's index.json (JSON only: nothing in it runs)."""
    path = Path(folder) / PackResult.JSON_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputFileError(f"pack={str(folder)!r}: cannot read {path.name} ({err}); give a folder make_pack "
                             "wrote") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("sprites"), list):
        raise InputFileError(f"pack={str(folder)!r}: {path.name} is not a charstudio pack index ({FORMAT})")
    return data


def redraw_sprite(studio: Studio, folder: str | os.PathLike, name: str) -> Any:
    """Re-draw sprite ``name`` of the pack saved in ``folder`` from its recipe, with the pack's
    reference attention (re-recorded from ``reference.png`` or the first sprite's recipe): the
    picture the pack holds. Returns the image."""
    from ..config import GenerationConfig
    from ..io_utils import open_image
    from ..sheets.reference import record_reference_image, reference_attention

    index = read_index(folder)
    by_name = {s.get("name"): s for s in index["sprites"] if isinstance(s, dict)}
    if name not in by_name:
        raise ConfigError("sprite", name, f"one of {', '.join(map(str, by_name))}")
    recipe = GenerationConfig.from_dict(by_name[name]["recipe"])
    settings = index.get("settings") or {}
    strength, ref = float(settings.get("reference_strength") or 0.0), settings.get("reference")
    if not strength or not ref:
        return studio.run(recipe).images[0]
    with reference_attention(studio.components["unet"], strength) as bank:
        if ref == REFERENCE_FILE:
            picture = open_image(Path(folder) / REFERENCE_FILE, "reference").convert("RGB")
            first = GenerationConfig.from_dict(index["sprites"][0]["recipe"])
            record_reference_image(studio, picture, first, bank)
        else:
            if ref == name:
                return studio.run(recipe).images[0]  # the anchor is drawn without a reference
            bank.record()
            studio.run(GenerationConfig.from_dict(by_name[ref]["recipe"]))
        bank.read()
        return studio.run(recipe).images[0]
