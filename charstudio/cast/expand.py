"""`@name` in prompts: character cards expanded into their words (pure text, no torch).

Grammar (a prompt is otherwise A1111 text, see charstudio.prompt_syntax):

- ``@rin`` names the card ``rin``. Its first mention becomes the card's words for the model
  family: trigger, description, traits (`Character.words`); a later mention of the same card
  becomes its short form (the trigger, else the description), so "@rin hugs @kai, @rin smiles"
  describes rin once.
- ``@rin:school`` is rin in the wardrobe outfit ``school`` (its slots replace the card's outfit
  traits); ``@rin:school:happy`` adds the expression ``happy``; ``@rin::happy`` is an expression
  with the usual outfit. Without an outfit, the wardrobe's ``default`` is worn when there is one.
- ``outfit @rin:school`` and ``expression @rin:happy`` anywhere in the prompt set rin's outfit or
  expression and leave the text (with their comma); ``@rin waving at @kai, outfit @rin:school``
  draws rin in her school outfit.
- A colon followed by a number is A1111's weight, not an outfit: ``(@rin:1.2)`` weights rin's words.
- ``\\@`` is a literal ``@``; an ``@`` inside a word (an e-mail address) is left alone.

An unknown card, outfit or expression is a `ConfigError` naming it and listing what exists; one
card given two outfits (or two expressions) is refused too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..errors import ConfigError
from .card import Character

_KEY = r"[A-Za-z][A-Za-z0-9_\-]*"
_NAME = r"[a-z0-9][a-z0-9_\-]*"
MENTION_RE = re.compile(rf"(?<![\w\\])@(?P<name>{_NAME})(?::(?:(?P<outfit>{_KEY})|(?=:[A-Za-z])))?(?::(?P<expr>{_KEY}))?")
DIRECTIVE_RE = re.compile(rf"(?i:(?P<kind>outfit|expression))\s+@(?P<name>{_NAME}):(?P<value>{_KEY})(?![\w:])")


def has_mentions(text: Any) -> bool:
    """True when the text names a card with ``@name``."""
    return isinstance(text, str) and (MENTION_RE.search(text) is not None or DIRECTIVE_RE.search(text) is not None)


@dataclass
class CastExpansion:
    """A prompt with its ``@name`` mentions expanded.

    `prompt`: the expanded text; `names`: the cards in order of first mention; `record`: one dict
    per card for the recipe's ``cast`` field (name, words, outfit, expression, family, payload);
    `loras`: each card's LoRA (name or path) for the family -> weight; `embeddings`: the cards'
    textual-inversion embeddings; `scene`: the prompt with every mention taken out (the words that
    belong to no one, for regional prompts); `cards`: the Character objects by name."""

    prompt: str
    names: list[str] = field(default_factory=list)
    record: list[dict[str, Any]] = field(default_factory=list)
    loras: dict[str, float] = field(default_factory=dict)
    embeddings: list[str] = field(default_factory=list)
    scene: str = ""
    cards: dict[str, Character] = field(default_factory=dict, repr=False)

    def words(self, name: str) -> str:
        """The words card `name` was expanded to."""
        return next(r["words"] for r in self.record if r["name"] == name)

    def card_loras(self, name: str) -> dict[str, float]:
        """Card `name`'s LoRA for the family -> weight ({} when it has none)."""
        payload = next(r["payload"] for r in self.record if r["name"] == name) or {}
        return {payload["lora"]: float(payload.get("weight", 1.0))} if payload.get("lora") else {}

    def regions(self, boxes: Iterable[Any]) -> list[dict[str, Any]]:
        """One region per card, in order of first mention, with these boxes: its prompt is the
        card's words plus the scene's own words, and its card's LoRA goes in the region's
        ``loras`` (so it acts only there)."""
        boxes = list(boxes)
        if len(boxes) != len(self.names):
            raise ConfigError("boxes", boxes, f"one box per character ({len(self.names)}: {', '.join(self.names)})")
        out = []
        for name, box in zip(self.names, boxes):
            prompt = ", ".join(p for p in (self.words(name), self.scene) if p)
            region: dict[str, Any] = {"character": name, "prompt": prompt, "box": box}
            loras = self.card_loras(name)
            if loras:
                region["loras"] = loras
            out.append(region)
        return out


def _cut(text: str, start: int, end: int) -> str:
    """Text with [start, end) removed, together with one comma that separated it."""
    before, after = text[:start].rstrip(), text[end:]
    if after.lstrip().startswith(","):
        after = after.lstrip()[1:]
    elif before.endswith(","):
        before = before[:-1]
    return (before + (" " if before and after.strip() else "") + after.lstrip()).strip()


def _tidy(text: str) -> str:
    text = re.sub(r"\s+,", ",", text)
    text = re.sub(r",\s*,+", ",", text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return text.strip().strip(",").strip()


def expand_prompt(text: str, *, family: str | None = None,
                  cards: Mapping[str, Character] | Iterable[Character] | None = None) -> CastExpansion:
    """Expand each ``@name`` in `text` into that card's words for `family` ("sd1", "sdxl", or None
    for the cards' any-family payload); see the module docstring for the grammar. `cards`: the
    cards to use (by name, or a list), instead of looking them up in the prompt folders."""
    if not isinstance(text, str):
        raise ConfigError("prompt", text, "expected text")
    given = _given_cards(cards)
    # 1. Directives (outfit @rin:school) set an outfit or expression and leave the text.
    chosen: dict[str, dict[str, str]] = {}
    order: list[str] = []

    def choose(name: str, kind: str, value: str | None) -> None:
        if value is None:
            return
        was = chosen.setdefault(name, {}).get(kind)
        if was is not None and was != value:
            raise ConfigError(f"@{name}:{kind}", value, f"@{name} already wears {kind} {was!r} in this prompt: "
                                                       "give one per character")
        chosen[name][kind] = value

    directives = list(DIRECTIVE_RE.finditer(text))
    for m in directives:
        choose(m["name"], m["kind"].lower(), m["value"])
    mentioned = {m["name"] for m in MENTION_RE.finditer(DIRECTIVE_RE.sub("", text))}
    body = text
    for m in reversed(directives):  # a directive for a card mentioned nowhere else is its mention
        if m["name"] in mentioned:
            body = _cut(body, m.start(), m.end())
        else:
            body = body[:m.start()] + f"@{m['name']}" + body[m.end():]
            mentioned.add(m["name"])
    mentions = list(MENTION_RE.finditer(body))
    for m in mentions:
        choose(m["name"], "outfit", m["outfit"])
        choose(m["name"], "expression", m["expr"])
        if m["name"] not in order:
            order.append(m["name"])

    # 2. Resolve the cards, then their words for the family (unknown outfits fail here).
    found = {name: _card(name, given) for name in order}
    words = {name: found[name].words(family, chosen.get(name, {}).get("outfit"),
                                     chosen.get(name, {}).get("expression")) for name in order}

    # 3. Replace the mentions: the first by the card's words, later ones by its short form.
    pieces, scene_pieces, at, seen = [], [], 0, set()
    for m in mentions:
        name = m["name"]
        pieces.append(body[at:m.start()])
        scene_pieces.append(body[at:m.start()])
        pieces.append(words[name] if name not in seen else _short(found[name], family))
        seen.add(name)
        at = m.end()
    pieces.append(body[at:])
    scene_pieces.append(body[at:])
    prompt = _tidy("".join(pieces).replace("\\@", "@"))
    scene = _tidy(re.sub(r"\s*,\s*", ", ", "".join(scene_pieces).replace("\\@", "@")))

    # 4. The record and the payloads for the family.
    expansion = CastExpansion(prompt=prompt, names=order, scene=scene, cards=found)
    for name in order:
        card, pick = found[name], chosen.get(name, {})
        payload = card.payload(family)
        expansion.record.append({"name": name, "words": words[name],
                                 "outfit": pick.get("outfit") or ("default" if "default" in card.wardrobe else None),
                                 "expression": pick.get("expression"), "family": family,
                                 "payload": payload.to_dict() if payload is not None else None})
        if payload is not None and payload.lora:
            expansion.loras[payload.lora] = payload.weight
        for emb in payload.embeddings if payload is not None else ():
            if emb not in expansion.embeddings:
                expansion.embeddings.append(emb)
    return expansion


def _given_cards(cards: Any) -> dict[str, Character] | None:
    if cards is None:
        return None
    if isinstance(cards, Mapping):
        return dict(cards)
    return {c.name: c for c in cards}


def _card(name: str, given: dict[str, Character] | None) -> Character:
    if given is not None:
        if name not in given:
            raise ConfigError("prompt", f"@{name}", "no such card here; known: "
                              + (", ".join("@" + n for n in sorted(given)) or "(none)"))
        return given[name]
    from .library import card_files, load_character

    if name not in card_files():
        raise ConfigError("prompt", f"@{name}", "no character card of that name; known cards: "
                          + (", ".join("@" + n for n in sorted(card_files())) or "(none)")
                          + " (see `charstudio cards`; write \\@ for a literal @)")
    return load_character(name)


def _short(card: Character, family: str | None) -> str:
    payload = card.payload(family)
    if payload is not None and payload.trigger:
        return payload.trigger
    return card.description.strip() or next(iter(card.traits.values()), card.name)
