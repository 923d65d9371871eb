"""Writing a card back to its YAML file without losing what the user wrote around the fields.

ruamel.yaml in round-trip mode reads a YAML file into maps that remember comments, key order,
quoting and keys charstudio does not know, and writes them back as they were, changed fields
aside. PyYAML (what cards are read with elsewhere) drops comments on load, so a card saved
through it would lose every note its author wrote. `write_card` updates the document in place:
a field the card holds is set (its comment stays), a field the card no longer holds is removed,
and the user's own keys (``x-...``) and every comment are left alone. Writing is atomic
(`io_utils.atomic_write`) and never overwrites unless asked.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from ..errors import CardError
from ..io_utils import atomic_write, read_text


def _yaml() -> Any:
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096  # a long description stays on one line
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def read_document(path: str | os.PathLike) -> Any:
    """A card file as a round-trip document (a CommentedMap keeping comments and unknown keys)."""
    from ruamel.yaml.error import YAMLError

    p = Path(path)
    text = read_text(p, "card", CardError)
    try:
        doc = _yaml().load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CardError(f"card {p}: malformed YAML{at}: {getattr(exc, 'problem', None) or exc}") from exc
    return doc


def _merge(doc: Any, data: dict[str, Any], owned: set[str]) -> Any:
    """Set `data`'s keys into the round-trip map `doc`, drop owned keys absent from `data`; nested
    maps merge the same way, so a comment inside the wardrobe survives an edit of another outfit."""
    from ruamel.yaml.comments import CommentedMap

    for key in [k for k in doc if k in owned and k not in data]:
        del doc[key]
    for key, value in data.items():
        old = doc.get(key) if isinstance(doc, CommentedMap) else None
        if isinstance(value, dict) and isinstance(old, CommentedMap):
            _merge(old, value, set(old))
        elif key in doc and _plain(doc[key]) == value:
            continue  # unchanged: keep its quoting and layout
        else:
            doc[key] = value
    return doc


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def card_text(card: Any, doc: Any = None) -> str:
    """The YAML text of `card` (a Character), written over the round-trip document `doc` when given."""
    from ruamel.yaml.comments import CommentedMap

    data = card.to_dict()
    owned = set(card.__dataclass_fields__) - {"source"}
    if doc is None or not isinstance(doc, CommentedMap):
        doc = CommentedMap()
    _merge(doc, data, owned)
    out = io.StringIO()
    _yaml().dump(doc, out)
    return out.getvalue()


def write_card(card: Any, path: str | os.PathLike, *, overwrite: bool = False,
               template: str | os.PathLike | None = None) -> Path:
    """Write `card` to `path` atomically. An existing file needs overwrite=True; its comments,
    key order and the user's own keys are kept (see the module docstring). `template`: a card file
    whose comments and layout a new file starts from (``charstudio card new --from``)."""
    p = Path(path)
    base = p if p.is_file() and overwrite else Path(template) if template is not None else None
    doc = read_document(base) if base is not None else None
    text = card_text(card, doc)
    return atomic_write(p, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=overwrite)
