"""Turnaround sheets: one character from the front, three-quarter, side and back.

A turnaround is a character sheet (`charstudio.sheets.make_sheet`) whose poses are views of the
same standing figure from the pose library, each with its view words added to the prompt
("from behind", "from side"). The views share the initial noise and reference attention to the
first view, as every sheet can, so the outfit and colours carry over.

The back view is an OpenPose skeleton seen from behind (`Pose.back_view`): no nose or eyes,
and the person's right side on the viewer's right, so a one-sided accessory (a sword in the
right hand) moves to the other side of the picture with the hand that holds it. Custom views
(``(label, pose, words)``) build on the same: ``("back, waving", load_pose("waving").back_view(),
"from behind")``.

Each picture's recipe holds its view words (in the prompt) and its pose, so its PNG re-runs
it; the sheet's settings record the views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..limits import check_unique, named_items

if TYPE_CHECKING:
    from ..studio import Studio

DEFAULT_REFERENCE_STRENGTH = 0.5  # see README "Turnaround sheets": measured on mini


@dataclass(frozen=True)
class View:
    """One view of a turnaround: its label, its pose (a library name, a Pose or a pose dict) and
    the words it adds to the prompt."""

    label: str
    pose: Any
    words: str


# The named views, in turnaround order: the figure turns away to the viewer's left.
VIEWS: dict[str, View] = {
    v.label: v for v in (
        View("front", "standing_front", "front view, facing viewer"),
        View("three-quarter", "standing_three_quarter", "three-quarter view"),
        View("side", "standing_side", "from side, profile"),
        View("back", "standing_back", "from behind, back view"),
    )
}
DEFAULT_VIEWS = ("front", "three-quarter", "side", "back")


def _key(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())


_BY_KEY = {_key(name): view for name, view in VIEWS.items()}


def resolve_views(views: Any = None, field: str = "views") -> list[View]:
    """The views asked for: None (front, three-quarter, side, back), names from `VIEWS` (a list
    or one comma-separated string; "three_quarter" and "Three Quarter" work too), `View`s,
    ``(label, pose, words)`` tuples or ``{"label", "pose", "words"}`` dicts, mixed freely."""
    from ..pose import Pose

    expected = (f"view names from {', '.join(VIEWS)}, or (label, pose, words) for a view of your own, "
                "e.g. ('back, waving', load_pose('waving').back_view(), 'from behind')")
    items = named_items(field, views, DEFAULT_VIEWS, "views", expected, singles=(View, dict, tuple))
    out: list[View] = []
    for item in items:
        if isinstance(item, View):
            view = item
        elif isinstance(item, str):
            view = _BY_KEY.get(_key(item))
            if view is None:
                import difflib

                close = difflib.get_close_matches(_key(item), list(_BY_KEY), n=2)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(field, item, f"one of {', '.join(VIEWS)}{hint}, or (label, pose, words)")
        elif isinstance(item, dict) and set(item) <= {"label", "pose", "words"} and {"label", "pose"} <= set(item):
            view = View(item["label"], item["pose"], item.get("words", ""))
        elif isinstance(item, (tuple, list)) and len(item) == 3:
            view = View(*item)
        else:
            raise ConfigError(field, item, expected)
        if not isinstance(view.label, str) or not view.label.strip():
            raise ConfigError(field, view.label, "a view label: non-empty text such as 'back'")
        if not isinstance(view.words, str):
            raise ConfigError(field, view.words, f"prompt words (text) for the view {view.label!r}")
        if not isinstance(view.pose, (str, dict, list, Pose)):
            raise ConfigError(field, type(view.pose).__name__,
                              f"a pose name, Pose or pose dict for the view {view.label!r}")
        out.append(view)
    check_unique(field, [v.label for v in out], "view")
    return out


def turnaround(studio: Studio, character_or_prompt: Any, views: Any = None, *,
               reference_strength: float = DEFAULT_REFERENCE_STRENGTH, seed: int | None = None,
               **settings: Any) -> Any:
    """The character from several sides in one sheet: a `SheetResult` labelled by view.

    ``views``: see `resolve_views` (default front, three-quarter, side, back). Each view draws
    its own pose with its words added to the prompt; all share the seed's noise and reference
    attention to the first view (``reference_strength``, 0 for none). ``settings`` go to
    `charstudio.sheets.make_sheet` (style, width, height, num_inference_steps, same_noise,
    compute_score, extra, scorer, min_identity, max_tries, ...). The sheet's settings record the views.

    Identity: every view is scored against the first and checked against it
    (`charstudio.identity.views.check_view`: a back view that is a mirror of the front, a card's
    one-sided feature on the wrong side) and against the card's palette; with ``min_identity``
    a view that fails either is re-rolled (`charstudio.sheets.identity`).
    """
    from ..sheets import make_sheet

    for own in ("poses", "labels", "extras"):
        if own in settings:
            raise ConfigError(own, settings[own], "no value: a turnaround sets its poses, labels and prompt "
                                                  "words from its views; give views=[(label, pose, words), ...]")
    chosen = resolve_views(views)
    check_views = settings.pop("check_views", True)  # False: the score and palette only
    sheet = make_sheet(studio, character_or_prompt, [v.pose for v in chosen], seed=seed,
                       reference_strength=reference_strength, labels=[v.label for v in chosen],
                       extras=[v.words for v in chosen], check_views=check_views, **settings)
    sheet.settings["workflow"] = "turnaround"
    sheet.settings["views"] = [
        {"label": v.label, "pose": v.pose if isinstance(v.pose, str) else None, "words": v.words,
         "custom": VIEWS.get(v.label) is not v}
        for v in chosen]
    return sheet
