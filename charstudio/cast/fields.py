"""Checks for the card fields of version 2 (the character bible): keep, wardrobe, expressions,
references, per-family payloads and identity history. Each returns the normalised value or raises
through ``bad(field, value, expected)``, the card's own error maker (it names the card's file)."""

from __future__ import annotations

import re
from typing import Any, Callable

BadField = Callable[[str, Any, str], Exception]

# A wardrobe outfit's slots, in the order their words are written.
OUTFIT_SLOTS = ("main", "headwear", "shoes", "accessories")
# The model families a card may carry a payload for (charstudio.models.family.FamilyName).
FAMILIES = ("sd1", "sdxl")
PAYLOAD_KEYS = ("lora", "trigger", "weight", "embeddings", "ip_adapter_scale")
HISTORY_KEYS = ("date", "sheet", "scorer", "mean", "min")
# Outfit and expression names: what `@name:outfit` can write (no spaces, no ':').
KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


def _text_list(fld: str, value: Any, bad: BadField, example: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise bad(fld, value, f"expected a list of text, e.g. {example}")
    return [v.strip() for v in value]


def check_keep(value: Any, bad: BadField) -> list[str]:
    return _text_list("keep", value, bad, "[long red hair, green eyes]")


def check_references(value: Any, bad: BadField) -> list[str]:
    return _text_list("references", value, bad, "[refs/rin_front.png]")


def _key(fld: str, name: Any, bad: BadField) -> str:
    if not isinstance(name, str) or not KEY_RE.match(name):
        raise bad(fld, name, "a name of letters, digits, '-' or '_' starting with a letter, e.g. school")
    return name


def check_wardrobe(value: Any, bad: BadField) -> dict[str, dict[str, Any]]:
    """{outfit: {main, headwear, shoes, accessories}}; an outfit written as text is its `main`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad("wardrobe", value, "expected a mapping of outfit name to slots, e.g. "
                                     "{school: {main: a blue shirt and trousers, headwear: a hat}}")
    out: dict[str, dict[str, Any]] = {}
    for name, slots in value.items():
        _key("wardrobe", name, bad)
        if isinstance(slots, str):
            slots = {"main": slots}
        if not isinstance(slots, dict) or not slots:
            raise bad(f"wardrobe.{name}", slots, f"expected slots among {', '.join(OUTFIT_SLOTS)}")
        checked: dict[str, Any] = {}
        for slot, words in slots.items():
            if slot not in OUTFIT_SLOTS:
                raise bad(f"wardrobe.{name}", slot, f"expected a slot among {', '.join(OUTFIT_SLOTS)}")
            if slot == "accessories" and isinstance(words, list):
                checked[slot] = _text_list(f"wardrobe.{name}.accessories", words, bad, "[a scarf, glasses]")
            elif isinstance(words, str):
                checked[slot] = words.strip()
            elif words is not None:
                raise bad(f"wardrobe.{name}.{slot}", words, "expected text")
        out[name] = checked
    return out


def outfit_text(slots: dict[str, Any]) -> str:
    """An outfit's words, slot by slot in `OUTFIT_SLOTS` order."""
    parts: list[str] = []
    for slot in OUTFIT_SLOTS:
        words = slots.get(slot)
        parts += words if isinstance(words, list) else [words or ""]
    return ", ".join(p for p in parts if p)


def check_expressions(value: Any, bad: BadField) -> dict[str, str]:
    """{name: words}; a list of words names each expression by its own words."""
    if value is None:
        return {}
    if isinstance(value, list):
        if not all(isinstance(v, str) and v.strip() for v in value):
            raise bad("expressions", value, "expected a list of text or a mapping of name to words")
        return {v.strip(): v.strip() for v in value}
    if not isinstance(value, dict):
        raise bad("expressions", value, "expected a mapping of name to words, e.g. {happy: smiling}, or a list")
    out = {}
    for name, words in value.items():
        if not isinstance(name, str) or not name.strip():
            raise bad("expressions", name, "expected text names")
        if not isinstance(words, str) or not words.strip():
            raise bad(f"expressions.{name}", words, "expected the words that draw it, e.g. smiling")
        out[name.strip()] = words.strip()
    return out


def _number(fld: str, value: Any, lo: float | None, hi: float | None, bad: BadField, example: str) -> float:
    span = f" between {lo:g} and {hi:g}" if lo is not None and hi is not None else ""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value
            or (span and not lo <= value <= hi)):  # value != value: NaN
        raise bad(fld, value, f"expected a number{span}, such as {example}")
    return float(value)


def check_families(value: Any, bad: BadField) -> dict[str, dict[str, Any]]:
    """{sd1: {lora, trigger, weight, embeddings, ip_adapter_scale}, sdxl: {...}}."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad("families", value, "expected a mapping of model family (sd1, sdxl) to its payload, "
                                     "e.g. {sd1: {lora: rin_sd15, trigger: rinchan}}")
    out: dict[str, dict[str, Any]] = {}
    for family, payload in value.items():
        if family not in FAMILIES:
            raise bad("families", family, f"expected a model family among {', '.join(FAMILIES)}")
        if not isinstance(payload, dict):
            raise bad(f"families.{family}", payload, f"expected a mapping with keys among {', '.join(PAYLOAD_KEYS)}")
        checked: dict[str, Any] = {}
        for key, v in payload.items():
            fld = f"families.{family}.{key}"
            if key not in PAYLOAD_KEYS:
                raise bad(f"families.{family}", key, f"expected a key among {', '.join(PAYLOAD_KEYS)}")
            if v is None:
                continue
            if key in ("lora", "trigger"):
                if not isinstance(v, str) or not v.strip():
                    raise bad(fld, v, "expected text or nothing")
                checked[key] = v.strip()
            elif key == "weight":
                checked[key] = _number(fld, v, -10, 10, bad, "0.8")
            elif key == "ip_adapter_scale":
                checked[key] = _number(fld, v, 0, 2, bad, "0.6")
            else:
                checked[key] = _text_list(fld, v, bad, "[easynegative]")
        out[family] = checked
    return out


def check_history(value: Any, bad: BadField) -> list[dict[str, Any]]:
    """[{date, sheet, scorer, mean, min}]: the identity scores of the card's sheets, oldest first."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad("identity_history", value, "expected a list of {date, sheet, scorer, mean, min}")
    out = []
    for i, entry in enumerate(value):
        fld = f"identity_history[{i}]"
        if not isinstance(entry, dict) or set(entry) - set(HISTORY_KEYS):
            raise bad(fld, entry, f"expected a mapping with keys among {', '.join(HISTORY_KEYS)}")
        checked = {}
        for key in HISTORY_KEYS:
            v = entry.get(key)
            if v is None:
                continue
            if key in ("mean", "min"):
                checked[key] = _number(f"{fld}.{key}", v, None, None, bad, "0.82")
            else:
                checked[key] = str(v)  # YAML reads an unquoted 2026-12-07 as a date
        out.append(checked)
    return out
