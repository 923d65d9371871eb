"""A storyboard script: panels, each with its characters, a pose, a setting, a shot and words.

A script is YAML (or the same as a dict)::

    title: Rin meets Kai
    seed: 10                     # panel i is drawn at seed + 16 * i (a panel may give its own seed)
    setting: light green background   # the default setting of every panel
    panels:
      - characters: ["@rin"]                         # a card, by name (see `charstudio cards`)
        pose: waving                                 # a library pose (one person)
        shot: full
        caption: Rin waits at the gate.
        line: "Kai! Over here!"
      - characters: ["@rin", {name: "@kai", expression: smiling}]
        pose: [standing_front, waving]               # two poses side by side, or a two-person library pose
        setting: yellow background
        shot: medium

Each character is ``"@name"``, ``"@name:outfit"`` or a mapping ``{name, outfit, expression}``;
a panel has one or two. ``pose``: a library pose name (or pose JSON file) for one character;
for two, a list of two poses (placed side by side) or a library pose of two people; left out,
``standing_front`` for each. The **setting** is the words of the place (on mini: a background
colour); it replaces the cards' own ``background`` trait. ``caption`` (narration) and ``line``
(what is said) are lettered under the panel, never drawn by the model.

**Shots** (`SHOTS`):

- ``full``: the whole figure, the pose as given ("full body").
- ``medium``: from the head to the hips (`Pose.portrait_box(down_to="hips")`; "upper body").
- ``close-up``: the head and shoulders (`Pose.portrait_box(down_to="chest")`; "portrait, close-up").

On a model of native size 256 px or more the pose is cropped to the shot's box and the shot's
words join the prompt, so the model draws the framing. Smaller models (mini, tiny) draw whole
figures only: they draw the full figure and the page shows the shot's box of it, scaled up.
Identity is scored on what was drawn (each character's region), never on the page's crop.

Loading checks everything before any drawing; an error names the panel and the field, e.g.
``panels[2].characters[1]='@kia': no such card; known cards: ...``. Torch-free.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputFileError

SHOTS: dict[str, dict[str, Any]] = {
    "full": {"down_to": None, "words": "full body"},
    "medium": {"down_to": "hips", "words": "upper body"},
    "close-up": {"down_to": "chest", "words": "portrait, close-up"},
}
SHOT_ALIASES = {"closeup": "close-up", "close up": "close-up", "close": "close-up", "mid": "medium"}
MAX_PANELS = 64  # each panel is a picture (and up to max_tries of them)
MAX_CHARACTERS = 2  # regional prompts: one region (left, right) per character
SEED_STRIDE = 16  # panel i's seed is the script's + 16 * i, so re-roll seeds (seed + try) never meet the next panel's
TEXT_LIMIT = 300  # a caption or line longer than this does not fit under a panel
PANEL_KEYS = ("characters", "pose", "setting", "shot", "caption", "line", "seed")
SCRIPT_KEYS = ("title", "seed", "setting", "style", "steps", "panels")
EXAMPLE = 'panels: [{characters: ["@rin", "@kai"], pose: [standing_front, waving], shot: full, line: "Hi!"}]'


@dataclass
class Cast:
    """One character in a panel: a card name, and optionally an outfit and an expression."""

    name: str
    outfit: str | None = None
    expression: str | None = None

    def label(self) -> str:
        return "@" + self.name + (f":{self.outfit}" if self.outfit else "") + (
            f" ({self.expression})" if self.expression else "")


@dataclass
class Panel:
    """One panel of a script (see the module docstring)."""

    characters: list[Cast]
    pose: list[str] | str | None = None
    setting: str = ""
    shot: str = "full"
    caption: str = ""
    line: str = ""
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["characters"] = [_cast_entry(c) for c in self.characters]
        return {k: v for k, v in data.items() if v not in (None, "")}


def _cast_entry(c: Cast) -> Any:
    """A character as the script writes it: "@rin", "@rin:school", or a mapping with its expression."""
    if c.expression is None:
        return "@" + c.name + (f":{c.outfit}" if c.outfit else "")
    return {"name": "@" + c.name, **({"outfit": c.outfit} if c.outfit else {}), "expression": c.expression}


@dataclass
class Script:
    """A storyboard script: its panels and what they share (title, seed, default setting, style, steps)."""

    panels: list[Panel]
    title: str = ""
    seed: int | None = None
    setting: str = ""
    style: str | None = None
    steps: int | None = None
    source: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in ("title", "seed", "setting", "style", "steps")
                               if getattr(self, k) not in (None, "")}
        out["panels"] = [p.to_dict() for p in self.panels]
        return out

    def panel_seed(self, index: int, base: int | None = None) -> int | None:
        """Panel ``index``'s seed: its own, else (``base`` or the script's seed) + `SEED_STRIDE` * index."""
        own = self.panels[index].seed
        if own is not None:
            return own
        start = self.seed if base is None else base
        return None if start is None else int(start) + SEED_STRIDE * index

    @property
    def cast(self) -> list[str]:
        """The card names the script uses, in order of first appearance."""
        names: list[str] = []
        for p in self.panels:
            names += [c.name for c in p.characters if c.name not in names]
        return names


def example_script() -> Path | None:
    """The shipped example script (``storyboards/example.yaml`` in the prompt folders:
    `charstudio.character.prompt_dirs`), or None when no folder has one."""
    from ..cast.library import prompt_dirs

    for folder in prompt_dirs():
        path = folder / "storyboards" / "example.yaml"
        if path.is_file():
            return path
    return None


# -- reading ----------------------------------------------------------------------------------------
def load_script(source: Any) -> Script:
    """A `Script` from a YAML file path, YAML text, a dict, or a Script (returned as is). Every
    field is checked here; errors name the panel and the field (and the file)."""
    if isinstance(source, Script):
        return source
    where = None
    if isinstance(source, (str, os.PathLike)) and not (isinstance(source, str) and "\n" in source):
        path = Path(source).expanduser()
        if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
            if not path.is_file():
                raise InputFileError(f"script={str(source)!r}: no such file")
            from ..io_utils import read_text

            source, where = read_text(path, "script", InputFileError), str(path)
    if isinstance(source, str):
        import yaml

        try:
            source = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise InputFileError(f"script {where or ''}: malformed YAML{at}: "
                                 f"{getattr(exc, 'problem', None) or exc}".replace("script :", "script:")) from exc
    try:
        return _script(source, where)
    except ConfigError as err:
        if where:
            raise ConfigError(err.field, err.value, f"{err.expected} (in {where})") from None
        raise


def _script(data: Any, where: str | None) -> Script:
    if not isinstance(data, dict):
        raise ConfigError("script", data, f"a mapping with a list of panels, e.g. {EXAMPLE}")
    unknown = sorted(set(map(str, data)) - set(SCRIPT_KEYS))
    if unknown:
        raise ConfigError(unknown[0], data[unknown[0]], f"a script field among {', '.join(SCRIPT_KEYS)}")
    panels = data.get("panels")
    if not isinstance(panels, list) or not panels:
        raise ConfigError("panels", panels, f"a list of one or more panels, e.g. {EXAMPLE}")
    if len(panels) > MAX_PANELS:
        raise ConfigError("panels", f"{len(panels)} panels", f"at most {MAX_PANELS}: split the story into scripts")
    setting = clean_text("setting", data.get("setting"))
    script = Script(panels=[_panel(i, p, setting) for i, p in enumerate(panels)], title=clean_text("title", data.get("title")),
                    seed=_seed("seed", data.get("seed")), setting=setting, source=where,
                    style=clean_text("style", data.get("style")) or None, steps=_steps(data.get("steps")))
    return script


def _panel(i: int, spec: Any, setting: str) -> Panel:
    name = f"panels[{i}]"
    if not isinstance(spec, dict):
        raise ConfigError(name, spec, f"a mapping with characters, pose, setting, shot, caption, line, e.g. {EXAMPLE}")
    unknown = sorted(set(map(str, spec)) - set(PANEL_KEYS))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", spec[unknown[0]], f"a panel field among {', '.join(PANEL_KEYS)}")
    chars = spec.get("characters")
    if isinstance(chars, (str, dict)):
        chars = [chars]
    if not isinstance(chars, list) or not 1 <= len(chars) <= MAX_CHARACTERS:
        raise ConfigError(f"{name}.characters", chars, f"a list of one or {MAX_CHARACTERS} characters, e.g. "
                                                       '["@rin", "@kai"] (each "@name", "@name:outfit" or '
                                                       "{name, outfit, expression})")
    cast = [_cast(f"{name}.characters[{k}]", c) for k, c in enumerate(chars)]
    if len({c.name for c in cast}) < len(cast):
        raise ConfigError(f"{name}.characters", chars, "different characters (one card appears twice)")
    return Panel(characters=cast, pose=_pose(f"{name}.pose", spec.get("pose"), len(cast)),
                 setting=clean_text(f"{name}.setting", spec.get("setting")) or setting,
                 shot=check_shot(spec.get("shot", "full"), f"{name}.shot"),
                 caption=clean_text(f"{name}.caption", spec.get("caption"), TEXT_LIMIT),
                 line=clean_text(f"{name}.line", spec.get("line"), TEXT_LIMIT), seed=_seed(f"{name}.seed", spec.get("seed")))


def _cast(field_name: str, spec: Any) -> Cast:
    expected = '"@name" (a card), "@name:outfit", or {name: "@name", outfit: ..., expression: ...}'
    if isinstance(spec, str):
        text = spec.strip()
        name, _, outfit = text.partition(":")
        spec = {"name": name, "outfit": outfit or None}
    if not isinstance(spec, dict):
        raise ConfigError(field_name, spec, expected)
    unknown = sorted(set(map(str, spec)) - {"name", "outfit", "expression"})
    if unknown:
        raise ConfigError(f"{field_name}.{unknown[0]}", spec[unknown[0]], "a character field among name, outfit, expression")
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip().lstrip("@").strip():
        raise ConfigError(field_name, name, expected)
    name = name.strip().lstrip("@").strip()
    outfit, expression = (clean_text(f"{field_name}.{k}", spec.get(k)) or None for k in ("outfit", "expression"))
    return Cast(name=name, outfit=outfit, expression=expression)


def _pose(field_name: str, value: Any, people: int) -> list[str] | str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, list) and len(value) == people and all(isinstance(v, str) and v.strip() for v in value):
        return [v.strip() for v in value]
    two = f"a list of {people} poses, one per character (e.g. [standing_front, waving]), or a two-person library pose"
    raise ConfigError(field_name, value, "a library pose name or pose JSON file" if people == 1 else two)


def check_shot(value: Any, field_name: str = "shot") -> str:
    """A shot name (`SHOTS`); "closeup" and "close up" are read as "close-up"."""
    text = value.strip().lower() if isinstance(value, str) else value
    text = SHOT_ALIASES.get(text, text)
    if text not in SHOTS:
        raise ConfigError(field_name, value, f"one of {', '.join(SHOTS)}")
    return text


def clean_text(field_name: str, value: Any, limit: int = TEXT_LIMIT) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigError(field_name, value, "text")
    if len(value) > limit:
        raise ConfigError(field_name, f"{len(value)} characters", f"at most {limit} characters of text")
    return " ".join(value.split())


def _seed(field_name: str, value: Any) -> int | None:
    if value is None:
        return None
    from ..recipe.config import MAX_SEED

    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED - SEED_STRIDE * MAX_PANELS:
        raise ConfigError(field_name, value, f"a whole number from 0 to {MAX_SEED - SEED_STRIDE * MAX_PANELS}")
    return value


def _steps(value: Any) -> int | None:
    if value is None:
        return None
    from ..validation import check_int

    return check_int("steps", value, 1, 150)
