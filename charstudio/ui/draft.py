"""Draft mode in the apps (issue 38): the "Draft" switch, the shown picture's draft line, and
"Finish", which re-draws a draft at full quality with the same seed and shows both pictures'
identity scores.

Notebook 01 (`ExploreApp`): Finish takes the gallery's selected picture, draws
`charstudio.speed.draft.finish(recipe)` and adds the finished picture to the gallery beside it.
Notebook 05 (`WorkflowsApp`): a workflow is several drawings (a design, then an inpaint, a
detail pass...), so Finish runs the same workflow again at full quality with the draft's seed.

Either way the guard (`charstudio.speed.guard.compare`) scores the draft and the finished pictures
with one identity scorer against one reference (`AnchorCache`): the card's first `references`
picture; else, for a lone picture of a card, the card's anchor picture (the card in
`storyboard.panels.ANCHOR_POSE`, drawn once at full quality and kept); else a sheet's own first
picture; else each draft against its finished picture. The panel shows the line and each draft
beside its finished picture with its score, red below the bar; the status line says it too.
"""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING, Any, Callable

import ipywidgets as W

from ..callbacks import CancelToken
from .common import error_text, png_bytes
from .identity_view import DRIFT_COLOUR
from .session import exclusive

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)

MAX_SHOWN = 8  # draft/finished pairs shown under the scores line
TOOLTIP = ("Draft: draw fast with the fastest setting the model supports (a few-step LoRA, else feature "
           "caching and fewer steps); Finish re-draws a picture you keep at full quality, same seed")


def choice_text(studio: Studio) -> str:
    """What draft mode does on ``studio``'s model, in one line (`speed.draft.choose`)."""
    from ..speed.draft import CACHE_INTERVAL, choose

    choice = choose(studio)
    p = choice.preset
    if p is not None:
        return f"the {p.name} few-step LoRA, {p.steps} steps, CFG {max(p.guidance_scale, 1.0):g} ({choice.reason})"
    return f"feature caching (the deep blocks in full every {CACHE_INTERVAL} steps) and fewer steps ({choice.reason})"


def draft_line(recipe: Any) -> str:
    """``describe(recipe)`` for a draft recipe, "full quality" for any other, "" for none."""
    if recipe is None:
        return ""
    if not getattr(recipe, "draft", None):
        return "full quality"
    from ..speed.draft import describe

    return describe(recipe)


def recipes_of(result: Any) -> list[Any]:
    """The recipes of a Result or a sheet (empty for anything else)."""
    return list(getattr(result, "recipes", None) or [])


def is_draft(result: Any) -> bool:
    return any(getattr(r, "draft", None) for r in recipes_of(result))


# --------------------------------------------------------------------------------------------
# scoring a draft against its finished picture (the guard: charstudio.speed.guard.compare)
# --------------------------------------------------------------------------------------------
class AnchorCache:
    """What a finished draft is scored against: its card's first `references` picture, else the
    card's anchor picture (the card in the storyboard's anchor pose, at full quality, drawn once per
    model, seed and step count and kept); None for a picture without a card."""

    def __init__(self) -> None:
        self.pictures: dict[tuple, Any] = {}

    def anchor(self, studio: Studio, recipe: Any, lone: bool = True) -> tuple[Any, str]:
        """(the anchor for `guard.compare`, what it is in words); (None, "") without a card, or for
        a sheet (not `lone`) of a card without references: a sheet has its own first picture."""
        from ..cast.library import load_character
        from ..storyboard.panels import anchor_config

        name = getattr(recipe, "character", None)
        if not name:
            return None, ""
        card = load_character(name, field="card")
        if card.references:
            return card, f"{name}'s reference picture"
        if not lone:
            return None, ""
        config = anchor_config(studio, card, seed=recipe.seed, steps=recipe.num_inference_steps,
                               settings={"guidance_scale": recipe.guidance_scale, "scheduler": recipe.scheduler})
        key = (id(studio), getattr(studio, "model_id", None), name, config.seed, config.num_inference_steps,
               config.guidance_scale, config.scheduler, config.prompt, tuple(sorted(config.loras.items())))
        if key not in self.pictures:
            self.pictures[key] = studio.run(config).images[0]
        return self.pictures[key], f"{name}'s anchor picture"


def finish_report(studio: Studio, draft: Any, full: Any, anchors: AnchorCache | None = None) -> tuple[Any, str]:
    """The guard's report (`speed.guard.compare`) of a draft result and its finished one, scored
    against the card's reference or anchor picture when they have a card; and what that anchor is.
    May draw the anchor: call it inside the app's `exclusive` block."""
    from ..speed.guard import compare

    recipes = recipes_of(full)
    anchor, what = (anchors or AnchorCache()).anchor(studio, recipes[0], lone=len(recipes) == 1)
    report = compare(studio, draft, full, anchor=anchor)
    if not what:
        own = all(row.draft is None for row in report.rows)
        what = ("its finished picture" if len(recipes) == 1 else "their finished pictures") if own else report.anchor
    return report, what


def report_line(report: Any, what: str) -> str:
    """One line: the scorer and bar, then per picture the draft's and the finished one's scores."""
    parts = []
    for row in report.rows:
        name = f"{row.label}: " if len(report.rows) > 1 else ""
        if row.is_anchor:
            parts.append(f"{name}anchor")
        elif row.draft is None:  # no anchor: the draft against its finished picture
            parts.append(f"{name}draft {row.draft_vs_full:.3f}{'' if row.passed else ' (below)'}")
        else:
            parts.append(f"{name}draft {row.draft:.3f}{'' if row.passed else ' (below)'}, finished {row.full:.3f}"
                         f"{'' if row.full_passed else ' (below)'}")
    return (f"identity against {what} ({report.scorer}, same character at >= {report.threshold:.3f}): "
            + "; ".join(parts))


def _cell(image: Any, text: str, passed: bool, size: int = 96) -> W.VBox:
    colour = "transparent" if passed else DRIFT_COLOUR
    cell = W.VBox([W.Image(value=png_bytes(image, size), format="png", layout=W.Layout(width=f"{size}px")),
                   W.HTML(value=f"<small>{text}</small>")],
                  layout=W.Layout(border=f"3px solid {colour}", margin="2px", width=f"{size + 10}px"))
    cell.add_class("charstudio-identity-ok" if passed else "charstudio-drifting")
    return cell


# --------------------------------------------------------------------------------------------
# the widgets
# --------------------------------------------------------------------------------------------
class DraftPanel:
    """The Draft switch, the shown picture's draft line and the Finish button of one app.

    The app reads `kwargs()` into its `make_config` / `studio.sheet` calls, calls `show(recipe)`
    when it shows a picture, and puts `widget` in its layout. Finish runs in the app's `runner`
    (its progress bar and Cancel button), behind the app's other runs (`session.exclusive`).
    """

    def __init__(self, app: Any, *, rerun: Callable[[], bool] | None = None) -> None:
        self.app = app
        self.rerun = rerun  # apps without a gallery: run again at full quality (WorkflowsApp)
        self.anchors = AnchorCache()
        self.last: Any = None  # the latest Finish's `speed.guard.GuardReport` (None: not scored)
        self.drafted: Any = None  # WorkflowsApp: the draft result a Finish re-run compares with
        self.switch = W.ToggleButton(value=False, description="Draft", icon="bolt", tooltip=TOOLTIP,
                                     layout=W.Layout(width="100px"))
        self.finish_button = W.Button(description="Finish", icon="check", layout=W.Layout(width="100px"),
                                      tooltip="re-draw the selected draft at full quality with the same seed")
        self.line = W.HTML(value="")  # describe() of the picture shown
        self.scores = W.HTML(value="")  # the latest Finish: both pictures' identity scores ...
        self.pictures = W.HBox(layout=W.Layout(flex_flow="row wrap"))  # ... under each picture
        self.switch.observe(lambda _c: self.refresh_tooltip(), names="value")
        self.finish_button.on_click(lambda _b: self.finish())
        self.widget = W.VBox([W.HBox([self.switch, self.finish_button, self.line]), self.scores, self.pictures])
        self.widget.add_class("charstudio-draft")
        self.refresh_tooltip()

    @property
    def on(self) -> bool:
        return bool(self.switch.value)

    def kwargs(self, full: bool = False) -> dict[str, Any]:
        """What the app's runs pass on: ``speed="draft"`` while the switch is on (and not `full`)."""
        return {"speed": "draft"} if self.on and not full else {}

    def refresh_tooltip(self) -> None:
        """Say what draft does on the loaded model (nothing is loaded for it)."""
        studio = self.app.source.loaded
        if studio is None:
            return
        try:
            self.switch.tooltip = f"Draft on {studio.model_id}: {choice_text(studio)}. Finish re-draws at full quality."
        except Exception as exc:  # a tooltip never stops the app
            log.debug("no draft description for %s: %s", getattr(studio, "model_id", studio), exc)

    def show(self, recipe: Any) -> None:
        """The line for the picture now shown (a Finish shows its scores after this)."""
        try:
            text = draft_line(recipe)
        except Exception as exc:
            text = f"draft: {error_text(exc)}"
        self.line.value = f"<small>{html.escape(text)}</small>" if text else ""
        self.scores.value, self.pictures.children = "", ()  # a Finish's scores belong to its pictures only
        self.refresh_tooltip()

    def show_scores(self, scored: tuple[Any, str] | None, note: str = "") -> str:
        """A Finish's scores (``(report, what the anchor is)``) in the panel: a line, and each
        draft beside its finished picture with its score (red below the bar); returns the line."""
        self.last = scored[0] if scored else None
        if scored is None:
            text = f"no identity scores: {note}"
            self.scores.value = f"<small>{html.escape(text)}</small>"
            self.pictures.children = ()
            return text
        report, what = scored
        text = report_line(report, what)
        self.scores.value = f"<small>{html.escape(text)}</small>"
        cells = []
        for i, row in enumerate(report.rows[:MAX_SHOWN]):
            name = html.escape(row.label[:16]) + "<br>" if len(report.rows) > 1 else ""
            if row.is_anchor:
                draft_text, full_text = "anchor", "anchor"
            elif row.draft is None:
                draft_text, full_text = f"vs finished {row.draft_vs_full:.3f}", "finished"
            else:
                draft_text, full_text = f"draft {row.draft:.3f}", f"finished {row.full:.3f}"
            cells += [_cell(report.draft_result.images[i], name + draft_text, row.passed),
                      _cell(report.full_result.images[i], name + full_text, row.full_passed)]
        self.pictures.children = tuple(cells)
        return text

    # -- Finish ---------------------------------------------------------------------------------
    def finish(self) -> bool:
        """Re-draw the selected draft at full quality (same seed); False when it cannot start."""
        app = self.app
        if app.runner.running:
            return False
        if self.rerun is not None:
            return self._finish_rerun()
        item = app.gallery.selected
        if item is None or item.recipe is None:
            app.status.warn("nothing to finish: make a draft (Draft on, then Generate) or pick one with its "
                            "restore button first")
            return False
        if not getattr(item.recipe, "draft", None):
            app.status.warn(f"#{item.number} is not a draft: it is already at full quality")
            return False
        from ..result import Result
        from ..speed.draft import finish

        draft_recipe, draft_image = item.recipe, item.image
        app.progress.reset()

        def job(token: CancelToken) -> Any:
            studio = app.studio
            full = finish(draft_recipe)
            with exclusive(studio, token):
                result = studio.run(full, progress=app.progress.report, cancel=token)
                scored, note = self._score(studio, Result([draft_image], [draft_recipe]), result)
            return result, scored, note

        def done(value: Any) -> None:
            result, scored, note = value
            app.last_result = result
            controls = {**item.controls, "draft": False, "seed": draft_recipe.seed, "lock_seed": True}
            finished = app.gallery.add(result.images[0], result.recipes[0], f"{item.label} finished"[:40], controls)
            app.gallery.selected = finished  # Save saves it; its restore button remakes it (Draft off)
            app.image.value = png_bytes(result.images[0], 320)
            app._show_recipe(result.recipes[0])
            text = self.show_scores(scored, note)
            app.status.ok(f"finished #{item.number} at full quality as #{finished.number} "
                          f"(seed {draft_recipe.seed}); {text}")

        return app.runner.start("Finish", job, done)

    def _finish_rerun(self) -> bool:
        """An app without a gallery (WorkflowsApp): its latest result, if a draft, run again at full quality."""
        app = self.app
        drafted = getattr(app, "result", None)
        if not is_draft(drafted):
            app.status.warn("nothing to finish: run a workflow with Draft on first" if drafted is None
                            else "the result shown is not a draft: it is already at full quality")
            return False
        self.drafted = drafted  # the re-run (`wrap`) compares with it
        app.seed.value = recipes_of(drafted)[0].seed  # the same seed as the draft (the workflow seeds the rest)
        return self.rerun()

    def wrap(self, job: Callable[[CancelToken], Any], done: Callable[[Any], None],
             drafted: Any = None) -> tuple[Callable[[CancelToken], Any], Callable[[Any], None]]:
        """An app's run (job, done) that also shows the draft line of its result, and, for a Finish
        re-run (``drafted``: the draft result), scores each draft picture and its finished one (`finish_report`).
        The job returns ``(before, result, shown)`` (WorkflowsApp's)."""
        pending: list[tuple[Any, str]] = []

        def scored(token: CancelToken) -> Any:
            value = job(token)
            if drafted is not None:
                studio = self.app.studio
                with exclusive(studio, token):
                    pending.append(self._score(studio, drafted, value[1]))
            return value

        def shown(value: Any) -> None:
            done(value)
            recipes = recipes_of(value[1])
            self.show(recipes[0] if recipes else None)
            if drafted is not None:
                scored, note = pending[0] if pending else (None, "not scored")
                text = self.show_scores(scored, note)
                self.app.status.ok(f"finished at full quality (seed {recipes_of(drafted)[0].seed}); {text}")

        return scored, shown

    def _score(self, studio: Studio, draft: Any, full: Any) -> tuple[tuple[Any, str] | None, str]:
        try:
            return finish_report(studio, draft, full, self.anchors), ""
        except Exception as exc:  # the finished picture still counts without scores
            log.warning("Finish: no identity scores: %s", error_text(exc))
            return None, error_text(exc)
