"""Character cards, style presets, and composing them into a prompt.

A card is a YAML file under `prompts/characters/` describing one character so it can be drawn
the same way every time. A style preset (in `prompts/styles.yaml`) wraps any prompt in a look
("{prompt}, watercolor painting, ..."). `compose_prompt(card, style)` makes the final text.

Cards are found in, by priority: folders in $CHARSTUDIO_PROMPTS (os.pathsep-separated),
`./prompts` in the working directory, then the cards shipped with charstudio.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .cast.card import HEX_COLOUR_RE, NAME_RE, OUTFIT_TRAITS, PALETTE_PARTS, CardPayload, Character
from .cast.library import card_files, is_character, list_characters, load_character, prompt_dirs
from .errors import CardError, ConfigError
from .io_utils import read_text

log = logging.getLogger(__name__)

# The card class and its lookup live in charstudio.cast (cards version 2); they stay importable here.
__all__ = ["Character", "CardPayload", "Style", "compose_prompt", "get_style", "is_character", "list_characters",
           "load_character", "load_styles", "prompt_dirs", "HEX_COLOUR_RE", "NAME_RE", "OUTFIT_TRAITS",
           "PALETTE_PARTS", "card_files"]


@dataclass
class Style:
    """A look applied to any prompt; `prompt` contains `{prompt}` where the subject goes."""

    name: str
    prompt: str
    negative_prompt: str = ""
    description: str = ""

    def apply(self, subject: str) -> str:
        return self.prompt.replace("{prompt}", subject)


def load_styles() -> dict[str, Style]:
    """All style presets; a style in a higher-priority folder replaces one of the same name."""
    import yaml

    styles: dict[str, Style] = {}
    for d in reversed(prompt_dirs()):
        f = d / "styles.yaml"
        if not f.is_file():
            continue
        try:
            data = yaml.safe_load(read_text(f, "styles", CardError)) or {}
        except yaml.YAMLError as exc:
            raise CardError(f"styles {f}: malformed YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise CardError(f"styles {f}: expected a mapping of style name to its fields")
        for name, spec in data.items():
            if not isinstance(spec, dict) or not isinstance(spec.get("prompt"), str) or "{prompt}" not in spec["prompt"]:
                raise CardError(f"styles {f}: style '{name}' field 'prompt' must be text containing {{prompt}}")
            extra = set(spec) - {"prompt", "negative_prompt", "description"}
            if extra:
                raise CardError(f"styles {f}: style '{name}' has unknown field '{sorted(extra)[0]}'")
            styles[str(name)] = Style(name=str(name), **spec)
    return styles


def get_style(name: str) -> Style:
    styles = load_styles()
    if name not in styles:
        raise ConfigError("style", name, f"no such style; known styles: {', '.join(sorted(styles)) or '(none)'}")
    return styles[name]


def compose_prompt(character: Character | str | None, style: str | Style | None = None,
                   extra: str = "") -> tuple[str, str]:
    """The final (prompt, negative prompt) for a card (or plain text), a style and extra words.

    The card's own style is used when `style` is None; pass style="none" for no style.
    """
    if isinstance(character, Character):
        subject, negative = character.subject, character.negative_prompt
        style = character.style if style is None else style
    else:
        subject, negative = (character or "").strip(), ""
    if extra and extra.strip():
        subject = f"{subject}, {extra.strip()}" if subject else extra.strip()
    if not subject:
        raise ConfigError("prompt", character, "give a prompt or a character card (see `charstudio cards`)")
    if style in (None, "", "none"):
        return subject, negative
    st = style if isinstance(style, Style) else get_style(style)
    negatives = [n for n in (negative, st.negative_prompt) if n]
    return st.apply(subject), ", ".join(negatives)
