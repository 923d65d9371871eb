"""Finding cards: the prompt folders, and cards by name or path.

Cards are found in, by priority: folders in $CHARSTUDIO_PROMPTS (os.pathsep-separated),
`./prompts` in the working directory, then the cards shipped with charstudio.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CardError, ConfigError
from .card import Character


def prompt_dirs() -> list[Path]:
    """Folders searched for `characters/*.yaml` and `styles.yaml`, highest priority first."""
    dirs: list[Path] = []
    env = os.environ.get("CHARSTUDIO_PROMPTS")
    if env:
        dirs += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    dirs.append(Path.cwd() / "prompts")
    here = Path(__file__).resolve().parent.parent  # the charstudio package
    dirs.append(here.parent / "prompts")  # a source checkout or editable install
    dirs.append(here / "prompts")  # the copy packed into a wheel
    seen, unique = set(), []
    for d in dirs:
        key = d.resolve() if d.exists() else d
        if key not in seen and d.is_dir():
            seen.add(key)
            unique.append(d)
    return unique


def card_files() -> dict[str, Path]:
    """Every loadable card by name -> its file (a higher-priority folder hides a lower one's)."""
    found: dict[str, Path] = {}
    for d in reversed(prompt_dirs()):  # later (higher-priority) folders override
        for f in sorted((d / "characters").glob("*.y*ml")):
            found[f.stem] = f
    return found


def list_characters() -> list[str]:
    """Names of all character cards that can be loaded by name."""
    return sorted(card_files())


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
    files = card_files()
    if text not in files:
        raise ConfigError(field, text, f"no such card; known cards: {', '.join(sorted(files)) or '(none)'} "
                                       "(or a card .yaml file)")
    return Character.load(files[text])


def is_character(name: str) -> bool:
    """True when `name` names a card (by name or as a .yaml path), so it is not a free prompt."""
    p = Path(str(name)).expanduser()
    # A .yaml path counts even when missing, so the user hears "no such file", not noise from it as a prompt.
    return str(name) in card_files() or (p.suffix.lower() in (".yaml", ".yml") and " " not in str(name))
