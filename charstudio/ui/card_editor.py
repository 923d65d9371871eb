"""The card editor in the Explore app: a character card's fields as widgets, and Save writing the
YAML back through `charstudio.cast.yaml_io.write_card` (comments and the user's own keys kept).

Lists are written one item a line: wardrobe lines are ``name: main | headwear | shoes | accessories``
(empty slots may be left out at the end; accessories separated by commas), expressions lines are
``name: words``. Save checks the whole card first (a bad field is shown in the status line, naming
it, and nothing is written)."""

from __future__ import annotations

import logging
from typing import Any, Callable

import ipywidgets as W

from ..cast.card import PALETTE_PARTS, Character
from ..cast.fields import FAMILIES, OUTFIT_SLOTS
from ..errors import ConfigError
from .common import StatusLine, error_text, labelled

log = logging.getLogger(__name__)

_WIDE = W.Layout(width="330px")


def _lines(text: str, field: str) -> list[tuple[str, str]]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if ":" not in line:
            raise ConfigError(f"{field} line {n}", line.strip(), "'name: words'")
        name, words = (part.strip() for part in line.split(":", 1))
        out.append((name, words))
    return out


def wardrobe_text(wardrobe: dict[str, dict[str, Any]]) -> str:
    """The wardrobe as the editor's lines (``name: main | headwear | shoes | accessories``)."""
    rows = []
    for name, slots in wardrobe.items():
        cells = [", ".join(v) if isinstance(v := slots.get(s, ""), list) else v for s in OUTFIT_SLOTS]
        while cells and not cells[-1]:
            cells.pop()
        rows.append(f"{name}: " + " | ".join(cells))
    return "\n".join(rows)


def parse_wardrobe(text: str) -> dict[str, dict[str, Any]]:
    """The editor's wardrobe lines as a card's wardrobe."""
    wardrobe: dict[str, dict[str, Any]] = {}
    for name, words in _lines(text, "wardrobe"):
        cells = [c.strip() for c in words.split("|")]
        if len(cells) > len(OUTFIT_SLOTS):
            raise ConfigError(f"wardrobe {name}", words, f"at most {len(OUTFIT_SLOTS)} slots: "
                              + " | ".join(OUTFIT_SLOTS))
        slots: dict[str, Any] = {}
        for slot, cell in zip(OUTFIT_SLOTS, cells):
            if cell:
                slots[slot] = [a.strip() for a in cell.split(",") if a.strip()] if slot == "accessories" else cell
        wardrobe[name] = slots
    return wardrobe


class FamilyPayloadRow:
    """One model family's payload: LoRA, trigger, weight, embeddings and IP-Adapter scale."""

    def __init__(self, family: str):
        self.family = family
        self.lora = W.Text(placeholder="LoRA name or file", layout=W.Layout(width="150px"))
        self.trigger = W.Text(placeholder="trigger", layout=W.Layout(width="90px"))
        self.weight = W.FloatText(value=1.0, step=0.05, layout=W.Layout(width="70px"), tooltip="LoRA weight")
        self.embeddings = W.Text(placeholder="embeddings, comma-separated", layout=W.Layout(width="150px"))
        self.ip_scale = W.FloatText(value=0.0, step=0.05, layout=W.Layout(width="70px"),
                                    tooltip="IP-Adapter scale (0: none)")
        self.widget = labelled(family, W.HBox([self.lora, self.trigger, self.weight, self.embeddings, self.ip_scale]))

    def set(self, payload: dict[str, Any]) -> None:
        self.lora.value = payload.get("lora", "")
        self.trigger.value = payload.get("trigger", "")
        self.weight.value = float(payload.get("weight", 1.0))
        self.embeddings.value = ", ".join(payload.get("embeddings", []))
        self.ip_scale.value = float(payload.get("ip_adapter_scale") or 0.0)

    def get(self, before: dict[str, Any]) -> dict[str, Any]:
        """The payload the row holds; a weight of 1 is written only when the card had one."""
        out: dict[str, Any] = {}
        for key, value in (("lora", self.lora.value.strip()), ("trigger", self.trigger.value.strip())):
            if value:
                out[key] = value
        if self.weight.value != 1.0 or "weight" in before:
            out["weight"] = float(self.weight.value)
        embeddings = [e.strip() for e in self.embeddings.value.split(",") if e.strip()]
        if embeddings:
            out["embeddings"] = embeddings
        if self.ip_scale.value:
            out["ip_adapter_scale"] = float(self.ip_scale.value)
        return out if set(out) - {"weight"} or "weight" in before else {}


class CardEditor:
    """A card's fields (description, keep, palette, wardrobe, expressions, payloads) and Save.

    >>> editor = CardEditor(); editor.load("rin"); editor.description.value = "a tall girl"
    >>> editor.save_button.click()   # writes prompts/.../rin.yaml, its comments kept
    """

    def __init__(self, status: StatusLine | None = None, on_saved: Callable[[Character], None] | None = None):
        self.status = status or StatusLine()
        self.on_saved = on_saved
        self.card: Character | None = None
        self.title = W.HTML(value="<i>pick a card to edit it</i>")
        self.description = W.Text(layout=_WIDE)
        self.keep = W.Text(placeholder="features that must not change, comma-separated", layout=_WIDE)
        self.palette = {p: W.Text(placeholder="#rrggbb", layout=W.Layout(width="80px")) for p in PALETTE_PARTS}
        self.wardrobe = W.Textarea(placeholder="school: a white shirt | a hat | boots | a scarf, glasses",
                                   layout=W.Layout(width="330px", height="70px"))
        self.expressions = W.Textarea(placeholder="smiling: smiling, happy", layout=W.Layout(width="330px",
                                                                                               height="60px"))
        self.payloads = {f: FamilyPayloadRow(f) for f in FAMILIES}
        self.save_button = W.Button(description="Save card", icon="save", disabled=True,
                                    tooltip="write the card's YAML file (comments kept)")
        self.save_button.on_click(lambda _b: self.save())
        palette = W.HBox([W.HBox([W.Label(p), w]) for p, w in self.palette.items()])
        self.widget = W.VBox([
            self.title, labelled("description", self.description), labelled("keep", self.keep),
            labelled("palette", palette), labelled("wardrobe", self.wardrobe),
            labelled("expressions", self.expressions),
            W.HTML("payloads per family: LoRA, trigger, weight, embeddings, IP-Adapter scale"),
            *(row.widget for row in self.payloads.values()), self.save_button])
        self.widget.add_class("charstudio-card-editor")

    def load(self, name_or_path: Any) -> Character | None:
        """Show a card's fields (None or "": nothing to edit)."""
        from ..cast.library import load_character

        if not name_or_path:
            self.card, self.save_button.disabled = None, True
            self.title.value = "<i>pick a card to edit it</i>"
            return None
        card = load_character(name_or_path)
        self.card = card
        self.title.value = f"<b>{card.name}</b> <small>{card.source or ''}</small>"
        self.description.value = card.description
        self.keep.value = ", ".join(card.keep)
        for part, w in self.palette.items():
            w.value = card.palette.get(part, "")
        self.wardrobe.value = wardrobe_text(card.wardrobe)
        self.expressions.value = "\n".join(f"{k}: {v}" for k, v in card.expressions.items())
        for family, row in self.payloads.items():
            row.set(card.families.get(family, {}))
        self.save_button.disabled = card.source is None
        return card

    def pick(self, name: Any) -> None:
        """`load` for a picker: a card that cannot be read is shown in the status line."""
        try:
            self.load(name)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.load(None)
            self.status.error(error_text(exc))

    def edited(self) -> Character:
        """The loaded card with the widgets' values (validated: a bad field raises naming it)."""
        if self.card is None:
            raise ConfigError("card", None, "pick a card to edit first")
        families = {}
        for family, row in self.payloads.items():
            payload = row.get(self.card.families.get(family, {}))
            if payload:
                families[family] = payload
        data = {**self.card.to_dict(), "description": self.description.value.strip(),
                "keep": [k.strip() for k in self.keep.value.split(",") if k.strip()],
                "palette": {p: w.value.strip() for p, w in self.palette.items() if w.value.strip()},
                "wardrobe": parse_wardrobe(self.wardrobe.value),
                "expressions": dict(_lines(self.expressions.value, "expressions")), "families": families}
        return Character.from_dict(data, source=self.card.source)

    def save(self) -> bool:
        """Write the edited card back to its file (comments and the user's own keys kept)."""
        from ..cast.yaml_io import write_card

        try:
            card = self.edited()
            write_card(card, card.source, overwrite=True)
        except Exception as exc:  # noqa: BLE001 - shown to the user; the file is left as it was
            log.debug("card save failed", exc_info=True)
            self.status.error(error_text(exc))
            return False
        self.card = card
        self.status.ok(f"saved {card.source}")
        if self.on_saved is not None:
            self.on_saved(card)
        return True
