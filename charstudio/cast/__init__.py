"""The cast: character cards (version 2, the character bible), ``@name`` in prompts, and the
round-trip YAML writer that keeps a card's comments.

- `card`: `Character` (re-exported by charstudio.character) and `CardPayload`;
- `library`: finding cards by name or path;
- `expand`: `expand_prompt("@rin waving at @kai")` -> `CastExpansion`;
- `yaml_io`: `write_card`, which keeps comments and the user's own keys.
"""

from __future__ import annotations

from .card import CardPayload, Character
from .expand import CastExpansion, expand_prompt, has_mentions
from .library import list_characters, load_character
from .yaml_io import write_card

__all__ = ["CardPayload", "CastExpansion", "Character", "expand_prompt", "has_mentions", "list_characters",
           "load_character", "write_card"]
