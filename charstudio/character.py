"""Character cards, style presets, and composing them into a prompt.

A card is a YAML file under `prompts/characters/` describing one character so it can be drawn
the same way every time. A style preset (in `prompts/styles.yaml`) wraps any prompt in a look
("{prompt}, watercolor painting, ..."). `compose_prompt(card, style)` makes the final text.

Cards are found in, by priority: folders in $CHARSTUDIO_PROMPTS (os.pathsep-separated),
`./prompts` in the working directory, then the cards shipped with charstudio.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import CardError, ConfigError
from .io_utils import atomic_write, read_text

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
HEX_COLOUR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
# The parts a card's `palette` may anchor (identity.palette measures each in the pose's regions).
PALETTE_PARTS = ("hair", "eyes", "outfit", "accent")


def prompt_dirs() -> list[Path]:
    """Folders searched for `characters/*.yaml` and `styles.yaml`, highest priority first."""
    dirs: list[Path] = []
    env = os.environ.get("CHARSTUDIO_PROMPTS")
    if env:
        dirs += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    dirs.append(Path.cwd() / "prompts")
    here = Path(__file__).resolve().parent
    dirs.append(here.parent / "prompts")  # a source checkout or editable install
    dirs.append(here / "prompts")  # the copy packed into a wheel
    seen, unique = set(), []
    for d in dirs:
        key = d.resolve() if d.exists() else d
        if key not in seen and d.is_dir():
            seen.add(key)
            unique.append(d)
    return unique


@dataclass
class Style:
    """A look applied to any prompt; `prompt` contains `{prompt}` where the subject goes."""

    name: str
    prompt: str
    negative_prompt: str = ""
    description: str = ""

    def apply(self, subject: str) -> str:
        return self.prompt.replace("{prompt}", subject)


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

    @property
    def subject(self) -> str:
        """The character's words, without any style: trigger, description, then traits."""
        parts = [self.trigger or "", self.description, *self.traits.values()]
        return ", ".join(p.strip() for p in parts if p and p.strip())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        return {k: v for k, v in data.items() if v not in (None, {}, "", []) and not (k == "lora_weight" and v == 1.0)}

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the card as YAML (atomically; an existing file needs overwrite=True)."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=overwrite)

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> "Character":
        where = f"card {source}" if source else "card"
        if not isinstance(data, dict):
            raise CardError(f"{where}: expected a mapping of fields (name, description, traits, ...), got {type(data).__name__}")
        known = {f.name for f in fields(cls)} - {"source"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CardError(f"{where}: unknown field '{unknown[0]}'; known fields are {', '.join(sorted(known))}")
        if "name" not in data:
            raise CardError(f"{where}: field 'name' is missing")
        return cls(**data, source=source)

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


def _card_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in reversed(prompt_dirs()):  # later (higher-priority) folders override
        for f in sorted((d / "characters").glob("*.y*ml")):
            found[f.stem] = f
    return found


def list_characters() -> list[str]:
    """Names of all character cards that can be loaded by name."""
    return sorted(_card_files())


def load_character(name_or_path: str | os.PathLike | Character, *, field: str = "character") -> Character:
    """A card by name (searched in the prompt folders) or by path to a YAML file.

    The one card resolver: wherever a value must be a card (a ``--card`` option, a region's
    ``@card``), it comes here and a name that is no card is refused, never read as a prompt.
    `field` is the name the user gave the value under, for the error.
    """
    if isinstance(name_or_path, Character):
        return name_or_path
    text = str(name_or_path)
    p = Path(text).expanduser()
    if p.suffix.lower() in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise CardError(f"{field}={text!r}: no such file")
        return Character.load(p)
    files = _card_files()
    if text not in files:
        raise ConfigError(field, text, f"no such card; known cards: {', '.join(sorted(files)) or '(none)'} "
                                       "(or a card .yaml file)")
    return Character.load(files[text])


def is_character(name: str) -> bool:
    """True when `name` names a card (by name or as a .yaml path), so it is not a free prompt."""
    p = Path(str(name)).expanduser()
    # A .yaml path counts even when missing, so the user hears "no such file", not noise from it as a prompt.
    return str(name) in _card_files() or (p.suffix.lower() in (".yaml", ".yml") and " " not in str(name))


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
