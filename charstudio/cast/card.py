"""The character card (version 2: the character bible).

A card is a YAML file under `prompts/characters/` describing one character so it can be drawn the
same way every time. Version 1 cards (name, description, traits, lora, trigger, ...) load
unchanged; version 2 adds optional fields: `keep` (features that must not change), `wardrobe`
(named outfits with slots), `expressions`, `references` (pictures), per-family payloads
(`families`: a LoRA, trigger, weight, embeddings and IP-Adapter scale for sd1 and for sdxl) and
`identity_history`. Keys starting with ``x-`` or ``x_`` are the user's own: a card keeps them
(the round-trip writer, `cast.yaml_io`) and charstudio ignores them; any other unknown key is
refused, so a typo ("hiar") is never silently dropped.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import CardError, ConfigError
from ..io_utils import read_text
from . import fields as v2

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
HEX_COLOUR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
# The parts a card's `palette` may anchor (identity.palette measures each in the pose's regions).
PALETTE_PARTS = ("hair", "eyes", "outfit", "accent")
# Traits a wardrobe outfit replaces (the card's everyday clothes give way to the outfit's slots).
OUTFIT_TRAITS = ("outfit", "headwear", "hat", "shoes", "accessory", "accessories")


def is_extension_key(key: Any) -> bool:
    """A user's own key (``x-notes``, ``x_studio``): kept in the file, ignored by charstudio."""
    return isinstance(key, str) and key[:2] in ("x-", "x_")


@dataclass(frozen=True)
class CardPayload:
    """What a card loads for one model family: its LoRA (name or path) at `weight`, the `trigger`
    word, textual-inversion `embeddings` and the IP-Adapter scale for its `references`."""

    family: str | None
    lora: str | None = None
    trigger: str | None = None
    weight: float = 1.0
    embeddings: tuple[str, ...] = ()
    ip_adapter_scale: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["embeddings"] = list(self.embeddings)
        return {k: val for k, val in data.items() if val not in (None, [], "")}


@dataclass
class Character:
    """A character card: who to draw, consistently.

    `traits` maps an aspect (hair, eyes, outfit, ...) to the words that describe it. `lora` is
    the name (under lora/) or path of the character's LoRA, used with its `trigger` word.
    `embeddings` names the textual-inversion embeddings its text writes (a name in embeddings/,
    whose file name is the word, or a file path): generating the card loads them.
    `palette` anchors colours by part (`PALETTE_PARTS`), e.g. {hair: "#d72828"}; `left` and
    `right` name a one-sided feature on the character's own side (left: eyepatch), which the
    turnaround checks keep on its side (identity.palette, identity.views).
    Version 2 fields (all optional): `keep`, `wardrobe` ({outfit: {main, headwear, shoes,
    accessories}}, one may be `default`), `expressions` ({name: words}), `references`,
    `families` ({sd1: {lora, trigger, weight, embeddings, ip_adapter_scale}, sdxl: {...}}; the
    top-level lora/trigger/lora_weight/embeddings mean "any family") and `identity_history`.
    """

    name: str
    description: str = ""
    traits: dict[str, str] = field(default_factory=dict)
    negative_prompt: str = ""
    seed: int | None = None
    style: str | None = None
    lora: str | None = None
    lora_weight: float = 1.0
    trigger: str | None = None
    embeddings: list[str] = field(default_factory=list)
    palette: dict[str, str] = field(default_factory=dict)
    left: str | None = None
    right: str | None = None
    # Version 2 (the character bible); see the module docstring.
    keep: list[str] = field(default_factory=list)
    wardrobe: dict[str, dict[str, Any]] = field(default_factory=dict)
    expressions: dict[str, str] = field(default_factory=dict)
    references: list[str] = field(default_factory=list)
    families: dict[str, dict[str, Any]] = field(default_factory=dict)
    identity_history: list[dict[str, Any]] = field(default_factory=list)
    source: str | None = field(default=None, compare=False)  # file it was read from

    def __post_init__(self) -> None:
        where = f"card {self.source}" if self.source else "card"

        def bad(fld: str, value: Any, expected: str) -> CardError:
            return CardError(f"{where}: field '{fld}'={value!r} is not valid: {expected}")

        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise bad("name", self.name, "use lowercase letters, digits, '-' or '_' (e.g. 'aiko')")
        for fld in ("description", "negative_prompt"):
            if not isinstance(getattr(self, fld), str):
                raise bad(fld, getattr(self, fld), "expected text")
        if not isinstance(self.traits, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.traits.items()):
            raise bad("traits", self.traits, "expected a mapping of text to text, e.g. {hair: long silver hair}")
        if not (self.description.strip() or self.traits or self.trigger):
            raise bad("description", self.description, "a card needs a description, traits or a trigger word")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise bad("seed", self.seed, "expected a whole number >= 0")
        for fld in ("style", "lora", "trigger", "left", "right"):
            value = getattr(self, fld)
            if value is not None and not (isinstance(value, str) and value.strip()):
                raise bad(fld, value, "expected text or nothing")
        if (isinstance(self.lora_weight, bool) or not isinstance(self.lora_weight, (int, float))
                or not -10 <= self.lora_weight <= 10):  # also refuses NaN, which compares false
            raise bad("lora_weight", self.lora_weight, "expected a number between -10 and 10, such as 0.8")
        if isinstance(self.embeddings, str):  # one name written without the list brackets
            self.embeddings = [self.embeddings]
        if not isinstance(self.embeddings, list) or not all(isinstance(e, str) and e.strip() for e in self.embeddings):
            raise bad("embeddings", self.embeddings, "expected a list of embedding names or files, e.g. [easynegative]")
        self.palette = _checked_palette(self.palette, bad)
        if self.left is not None and self.left.strip().lower() == (self.right or "").strip().lower():
            raise bad("right", self.right, f"a feature other than left's ({self.left!r}): on both sides it is not one-sided")
        self.keep = v2.check_keep(self.keep, bad)
        self.wardrobe = v2.check_wardrobe(self.wardrobe, bad)
        self.expressions = v2.check_expressions(self.expressions, bad)
        self.references = v2.check_references(self.references, bad)
        self.families = v2.check_families(self.families, bad)
        self.identity_history = v2.check_history(self.identity_history, bad)

    @property
    def subject(self) -> str:
        """The character's words, without any style: trigger, description, then traits."""
        parts = [self.trigger or "", self.description, *self.traits.values()]
        return ", ".join(p.strip() for p in parts if p and p.strip())

    def words(self, family: str | None = None, outfit: str | None = None, expression: str | None = None) -> str:
        """The character's words for `family` (its trigger there), in `outfit` and with `expression`:
        trigger, description, traits, with the outfit's slots in place of the outfit traits
        (`OUTFIT_TRAITS`). No outfit named: the wardrobe's `default` when there is one."""
        payload = self.payload(family)
        trigger = payload.trigger if payload is not None else None
        if outfit is None and "default" in self.wardrobe:
            outfit = "default"
        traits = dict(self.traits)
        if outfit is not None:  # the outfit takes the place of the first outfit trait
            dressed, traits = self.outfit_words(outfit), {}
            for key, val in self.traits.items():
                if key not in OUTFIT_TRAITS:
                    traits[key] = val
                elif "outfit" not in traits:
                    traits["outfit"] = dressed
            traits.setdefault("outfit", dressed)
        if expression is not None:
            traits["expression"] = self.expression_words(expression)
        parts = [trigger or "", self.description, *traits.values()]
        return ", ".join(p.strip() for p in parts if p and p.strip())

    def outfit_words(self, name: str) -> str:
        """The words of wardrobe outfit `name` (ConfigError listing the outfits when it has none)."""
        if name not in self.wardrobe:
            raise ConfigError(f"@{self.name}:outfit", name, "no such outfit in the card's wardrobe; it has "
                              + (", ".join(self.wardrobe) or "none (add a wardrobe to the card)"))
        return v2.outfit_text(self.wardrobe[name])

    def expression_words(self, name: str) -> str:
        """The words of expression `name` (ConfigError listing the card's expressions otherwise)."""
        if name not in self.expressions:
            raise ConfigError(f"@{self.name}:expression", name, "no such expression on the card; it has "
                              + (", ".join(self.expressions) or "none (add expressions to the card)"))
        return self.expressions[name]

    def payload(self, family_name: str | None = None) -> CardPayload | None:
        """What the card loads on `family_name` ("sd1", "sdxl"; None: any family): the family's
        entry in `families`, its missing keys filled from the top-level lora / trigger /
        lora_weight / embeddings (which mean "any family"). None when there is nothing to load."""
        if family_name is not None and family_name not in v2.FAMILIES:
            raise ConfigError("family", family_name, f"a model family among {', '.join(v2.FAMILIES)}")
        own = self.families.get(family_name, {}) if family_name else {}
        lora = own.get("lora", self.lora)
        trigger = own.get("trigger", self.trigger)
        weight = own.get("weight", self.lora_weight)
        embeddings = tuple(own.get("embeddings", self.embeddings))
        scale = own.get("ip_adapter_scale")
        if lora is None and trigger is None and not embeddings and scale is None:
            return None
        return CardPayload(family_name, lora, trigger, float(weight), embeddings, scale)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        return {k: v for k, v in data.items() if v not in (None, {}, "", []) and not (k == "lora_weight" and v == 1.0)}

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the card as YAML (atomically; an existing file needs overwrite=True, and keeps its
        comments and the user's own keys: `cast.yaml_io.write_card`)."""
        from .yaml_io import write_card

        return write_card(self, path, overwrite=overwrite)

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> "Character":
        where = f"card {source}" if source else "card"
        if not isinstance(data, dict):
            raise CardError(f"{where}: expected a mapping of fields (name, description, traits, ...), got {type(data).__name__}")
        known = {f.name for f in fields(cls)} - {"source"}
        unknown = sorted(k for k in set(data) - known if not is_extension_key(k))
        if unknown:
            raise CardError(f"{where}: unknown field '{unknown[0]}'; known fields are {', '.join(sorted(known))}")
        if "name" not in data:
            raise CardError(f"{where}: field 'name' is missing")
        return cls(**{k: val for k, val in data.items() if k in known}, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Character":
        """Read a card from a YAML file; errors name the file, and the line or field at fault."""
        import yaml

        p = Path(path)
        text = read_text(p, "card", CardError)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise CardError(f"card {p}: malformed YAML{at}: {problem}") from exc
        return cls.from_dict(data, source=str(p))


def _checked_palette(palette: Any, bad: Any) -> dict[str, str]:
    """A card's palette with its colours in lowercase, in `PALETTE_PARTS` order (``bad`` makes the error)."""
    if palette is None:
        return {}
    if not isinstance(palette, dict):
        raise bad("palette", palette, 'expected a mapping of part to hex colour, e.g. {hair: "#d72828"}')
    for part, colour in palette.items():
        if part not in PALETTE_PARTS:
            raise bad("palette", part, f"expected a part among {', '.join(PALETTE_PARTS)}")
        if not (isinstance(colour, str) and HEX_COLOUR_RE.match(colour)):
            raise bad(f"palette.{part}", colour, 'expected a hex colour "#rrggbb", such as "#d72828" (quoted in YAML)')
    return {p: palette[p].lower() for p in PALETTE_PARTS if p in palette}
