"""The design picker every app shares: a character card, a typed prompt, or a recipe from a gallery."""

from __future__ import annotations

from typing import Any

import ipywidgets as W


class DesignPicker:
    """Pick a design: a character card, a typed prompt, or a recipe from a gallery.

    `value()` is what the core's functions accept: a card name, a prompt, or a GenerationConfig.
    """

    def __init__(self, gallery: Any | None = None, prompt: str = "", card: str | None = None,
                 wide: bool = False):
        from ..character import list_characters

        self.gallery = gallery
        self._cards = list_characters()
        self.source = W.Dropdown(layout=W.Layout(width="260px"))
        if wide:  # a box as wide as its row, and a long prompt wraps instead of scrolling out of sight
            # (no side margins: 100% plus ipywidgets' 2 px margins would overflow the box by 4 px)
            self.prompt = W.Textarea(value=prompt, placeholder="prompt (or extra words for a card)", rows=2,
                                     layout=W.Layout(width="100%", margin="2px 0"))
        else:
            self.prompt = W.Text(value=prompt, placeholder="prompt (or extra words for a card)",
                                 layout=W.Layout(width="260px"))
        self.refresh()
        if card is not None and card in self._cards:
            self.source.value = f"card:{card}"
        if gallery is not None:
            gallery.listeners.append(self.refresh)
        self.widget = W.VBox([self.source, self.prompt])

    def refresh(self) -> None:
        """Rebuild the options (new gallery pictures appear), keeping the current choice."""
        options: list[tuple[str, str]] = [("prompt (typed below)", "prompt")]
        options += [(f"card: {c}", f"card:{c}") for c in self._cards]
        if self.gallery is not None:
            options += [(f"gallery {label}", f"recipe:{n}") for n, label, _ in self.gallery.recipes()]
        current = self.source.value
        self.source.options = options
        self.source.value = current if current in {v for _, v in options} else "prompt"

    def value(self) -> Any:
        """A card name, a prompt, or a recipe (GenerationConfig)."""
        from ..errors import ConfigError

        choice = self.source.value or "prompt"
        if choice.startswith("card:"):
            return picked_card(choice[5:])
        if choice.startswith("recipe:"):
            return self.gallery.recipe(int(choice[7:]))  # type: ignore[union-attr]
        text = self.prompt.value.strip()
        if not text:
            raise ConfigError("prompt", self.prompt.value, "type a prompt or pick a card")
        return text

    def extra(self) -> str:
        """Extra words typed for a card (empty for prompts and recipes)."""
        return self.prompt.value.strip() if (self.source.value or "").startswith("card:") else ""


def picked_card(name: str) -> str:
    """A card name from a picker, checked when it is used: the picker listed the cards when the
    app started, and a card deleted or renamed since must be refused by name (`load_character`),
    not drawn as a prompt of its name."""
    from ..character import load_character

    load_character(name, field="card")
    return name
