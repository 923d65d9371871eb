"""Identity in multi-picture results: is every picture still the same character, and re-rolls until it is.

Every sheet (and turnaround, expression sheet, pose animation, LoRA sweep) gets an `IdentityReport`
from an identity scorer (`charstudio.identity.get_scorer`): each picture's identity score against
the anchor (the first picture) and the pairwise matrix, on one scale (1 - the scorer's
difference; higher is more alike), with the name of the scorer that produced the numbers.

Checks beside the score: a card with a ``palette`` gets each picture's colours measured per part
(`identity.palette.check_palette`); a turnaround's views are checked against the front
(`identity.views.check_view`: not a mirror of it, one-sided features on their side).

Re-roll (``min_identity``, ``max_tries``; off unless ``min_identity`` is given): after the first
pass every view (never the anchor) whose score is below ``min_identity`` or whose checks failed
is redrawn with the next seed (try t of a view drawn at seed s uses s + t), all failing views of
a round in one batch, until each passes or has had ``max_tries`` tries. The best try is kept (passing checks first, then the
highest score); every try's seed, score and checks are recorded, and one line names the views
that never reached it.

Scoring never downloads and never fails a sheet: with no scorer available the automatic choice
logs one line and the sheet records no scores. A scorer asked for by name must load.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import CharstudioError, ConfigError

log = logging.getLogger(__name__)

AUTO = "auto"
OFF = ("none", "off")  # scorer=False or "none": no identity scoring at all
DEFAULT_MAX_TRIES = 4
MAX_TRIES_LIMIT = 16  # a bound on the redraws one sheet may ask for
PNG_KEY = "charstudio_identity"  # the PNG text chunk beside the recipe


# -- options ---------------------------------------------------------------------------------------
def check_min_identity(value: Any, field: str = "min_identity") -> float | str | None:
    """None (no re-roll on the score), "auto" (the scorer's own threshold) or a number on the
    identity-score scale (1 - difference), from -1 to 1; text that reads as a number (the CLI's) is one."""
    expected = ("a number on the identity-score scale (1 - the scorer's difference, higher is more alike), "
                "e.g. 0.8, or 'auto' for the scorer's own same-character threshold")
    if value is None:
        return None
    number = value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(field, value, expected) from None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(float(number)):
        raise ConfigError(field, value, expected)
    if not -1.0 <= float(number) <= 1.0:
        raise ConfigError(field, value, f"between -1 and 1: {expected}")
    return float(number)


def check_max_tries(value: Any, field: str = "max_tries") -> int:
    """How many tries a view may have in all (the first draw included), 1 to `MAX_TRIES_LIMIT`."""
    from ..validation import check_int

    return check_int(field, value, 1, MAX_TRIES_LIMIT)


def resolve_scorer(scorer: Any = None, field: str = "scorer", model: str | None = None) -> Any:
    """The identity scorer for ``scorer`` (None/"auto": the best available, see
    `charstudio.identity.get_scorer`; a name, a CCIP folder or a `Scorer`; False or "none": no
    scoring, None returned). The automatic choice
    gives None, with one log line, when no scorer is available; a scorer named by the user must
    load, and a bad name raises `ConfigError` naming ``field``. ``model``: the model whose pictures
    are scored (its name makes the automatic fallback to mini's scorer warn on other models)."""
    from ..identity import Scorer

    if isinstance(scorer, Scorer):
        return scorer
    if scorer is False or (isinstance(scorer, str) and scorer.strip().lower() in OFF):
        return None  # asked for no identity scores (e.g. to time a sheet without them)
    auto = scorer is None or (isinstance(scorer, str) and scorer.strip().lower() == AUTO)
    try:
        from ..identity import get_scorer

        return get_scorer(None if auto else scorer, model=model)
    except ConfigError as err:
        if auto:
            log.warning("identity: no scorer available (%s); no identity scores are recorded", err)
            return None
        if err.field == field:
            raise
        raise ConfigError(field, err.value, err.expected) from None
    except (ImportError, CharstudioError, OSError, RuntimeError) as err:
        if auto:
            log.warning("identity: no scorer available (%s); no identity scores are recorded", err)
            return None
        raise


# -- what a sheet records ------------------------------------------------------------------------------
@dataclass
class SheetIdentity:
    """A multi-picture result's identity record: the report of the pictures kept (None without a
    scorer), the re-roll settings, each picture's checks and tries, the views that never reached
    the bar and the one line that says so."""

    report: Any = None
    scorer: str | None = None
    min_identity: float | None = None  # resolved ("auto" -> the scorer's threshold); None: no bar on the score
    max_tries: int = 1
    checks: list[dict[str, Any]] = field(default_factory=list)  # per picture: {"palette", "view", "passed"}
    tries: list[list[dict[str, Any]]] = field(default_factory=list)  # per picture: {"seed", "score", "passed", "kept"}
    never_reached: list[str] = field(default_factory=list)
    anchors: list[int] = field(default_factory=list)  # the pictures the others were scored against
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"scorer": self.scorer, "min_identity": self.min_identity, "max_tries": self.max_tries}
        out.update(self.report.to_dict() if self.report is not None else {"scores": None})
        out.update(checks=self.checks, tries=self.tries, never_reached=self.never_reached, note=self.note)
        return out

    def picture(self, i: int) -> dict[str, Any]:
        """What picture ``i``'s PNG records (`PNG_KEY`): its score against the anchor, its row of
        the matrix, its checks and tries, and who scored it."""
        rep = self.report
        return {"index": i, "label": rep.labels[i] if rep is not None and i < len(rep.labels) else None,
                "scorer": self.scorer, "threshold": rep.threshold if rep is not None else None,
                "anchor": rep.anchor if rep is not None else 0,
                "score": rep.scores[i] if rep is not None else None,
                "row": rep.matrix[i] if rep is not None else None, "min_identity": self.min_identity,
                "checks": self.checks[i] if i < len(self.checks) else None,
                "tries": self.tries[i] if i < len(self.tries) else None}

    def picture_text(self, i: int) -> str:
        return json.dumps(self.picture(i))

    def settings(self) -> dict[str, Any]:
        """The sheet settings' part: scorer, bar, tries, and every try's seed and score per picture."""
        return {"scorer": self.scorer, "min_identity": self.min_identity, "max_tries": self.max_tries,
                "tries": [[{"seed": t["seed"], "score": t["score"]} for t in view] for view in self.tries]}


# -- measuring ---------------------------------------------------------------------------------------------
@dataclass
class _Try:
    seed: int | None
    image: Any
    recipe: Any
    embedding: Any = None
    score: float | None = None
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def passed_checks(self) -> bool:
        return all(not c.get("failed") for c in self.checks.values() if isinstance(c, dict))

    def rank(self) -> tuple:
        return (self.passed_checks, -math.inf if self.score is None else self.score)

    def record(self, kept: bool, bar: float | None) -> dict[str, Any]:
        return {"seed": self.seed, "score": self.score, "passed": self.passed_checks and (
            bar is None or self.score is None or self.score >= bar), "checks": self.checks, "kept": kept}


class IdentityRun:
    """Scores, checks and (when asked) re-rolls one sheet's pictures.

    ``redraw(indices, configs) -> {index: (image, recipe)}`` draws the given views from the
    given recipes, one batch per call (the sheet's drawer supplies it). ``card`` gives the palette
    and one-sided features; ``check_views`` runs the turnaround's view checks against the anchor.
    ``anchors``: per picture, the picture it is scored against (a pack: its outfit's first
    expression); those pictures are never re-rolled. None: every picture against ``anchor``.
    """

    def __init__(self, scorer: Any, *, min_identity: float | str | None = None, max_tries: int = DEFAULT_MAX_TRIES,
                 labels: Sequence[str] = (), card: Any = None, check_views: bool = False, anchor: int = 0,
                 anchors: Sequence[int] | None = None):
        self.scorer = scorer
        asked = check_min_identity(min_identity)
        self.max_tries = check_max_tries(max_tries)
        # Re-rolls are asked for with min_identity; failed checks then count as failures too.
        self.rerolls = asked is not None and self.max_tries > 1
        if asked == AUTO:
            asked = None if scorer is None else round(float(scorer.min_score), 6)
        if asked is not None and scorer is None:
            log.warning("identity: min_identity=%s is ignored: no identity scorer is available", min_identity)
            asked = None
        self.min_identity: float | None = asked
        self.labels, self.anchor, self.check_views = list(labels), anchor, check_views
        self.anchors = list(anchors) if anchors is not None else None
        self.anchor_set = set(self.anchors) if self.anchors is not None else {anchor}
        self.palette = dict(getattr(card, "palette", None) or {}) if card is not None else {}
        sides = {side: getattr(card, side, None) for side in ("left", "right")} if card is not None else {}
        self.sides = {k: v for k, v in sides.items() if v} or None
        self._anchor_embedding: Any = None  # the first pass's embeddings, by picture
        self._warned: set[str] = set()

    # 1. The first pass: score every picture, run the checks.
    def measure(self, images: Sequence[Any], recipes: Sequence[Any]) -> list[_Try]:
        tries = [_Try(getattr(r, "seed", None), im, r) for im, r in zip(images, recipes)]
        self._score(tries, list(range(len(tries))), first=True)
        for i, t in enumerate(tries):
            t.checks = self._checks(i, t, tries[self.anchor_of(i)])
        return tries

    def anchor_of(self, i: int) -> int:
        """The picture picture ``i`` is scored and checked against."""
        return self.anchors[i] if self.anchors is not None else self.anchor

    # 2. Re-roll the views that fail, a round at a time, one batch per round.
    def reroll(self, best: list[_Try], redraw: Callable[[list[int], list[Any]], dict[int, tuple[Any, Any]]],
               cancel: Any = None) -> list[list[_Try]]:
        history = [[t] for t in best]
        for attempt in range(1, self.max_tries if self.rerolls else 1):
            todo = [i for i, t in enumerate(best) if i not in self.anchor_set and not self._passes(t)]
            if not todo:
                break
            if cancel is not None:
                cancel.check()
            configs = [None] * len(best)
            for i in todo:
                first = history[i][0].recipe
                configs[i] = first.replace(seed=int(first.seed) + attempt)
            drawn = redraw(todo, configs)
            new = [_Try(getattr(drawn[i][1], "seed", None), drawn[i][0], drawn[i][1]) for i in todo]
            self._score(new, todo)
            for i, t in zip(todo, new):
                t.checks = self._checks(i, t, best[self.anchor_of(i)])
                history[i].append(t)
                if t.rank() > best[i].rank():
                    best[i] = t
        return history

    def _passes(self, t: _Try) -> bool:
        return t.passed_checks and (self.min_identity is None or t.score is None or t.score >= self.min_identity)

    # 3. What the sheet keeps and records.
    def finish(self, best: list[_Try], history: list[list[_Try]]) -> SheetIdentity:
        report = None
        if self.scorer is not None and all(t.embedding is not None for t in best):
            import numpy as np

            from ..identity import IdentityReport

            emb = np.stack([np.asarray(t.embedding) for t in best])
            report = IdentityReport.from_difference(self.scorer, self.scorer.difference(emb, emb), self.anchor,
                                                    self.labels)
            if self.anchors is not None:  # each against its own anchor
                report.scores = [report.matrix[i][a] for i, a in enumerate(self.anchors)]
        tries = [[t.record(t is best[i], self.min_identity) for t in history[i]] for i in range(len(best))]
        checks = [dict(t.checks, passed=t.passed_checks) for t in best]
        never = [i for i, t in enumerate(best) if i not in self.anchor_set and not self._passes(t)]
        labels = [self.labels[i] if i < len(self.labels) else str(i) for i in never]
        note = None
        if never:
            views = ", ".join(f"{label} ({self._why(best[i])})" for label, i in zip(labels, never))
            if self.rerolls or self.min_identity is not None:
                goal = f"identity >= {self.min_identity:.3f} ({self.scorer.name})" if self.min_identity is not None else ""
                if any(best[i].checks for i in never):
                    goal += (" and " if goal else "") + "its checks"
                within = f"{self.max_tries} tries" if self.max_tries > 1 else "1 try (max_tries=1: no re-rolls)"
                note = f"identity: {len(never)} of {len(best) - len(self.anchor_set)} view(s) never reached {goal} in {within}: {views}"
            else:
                note = f"identity: {len(never)} of {len(best) - len(self.anchor_set)} view(s) failed a check (no re-rolls asked): {views}"
            log.warning("%s", note)
        return SheetIdentity(report=report, scorer=getattr(self.scorer, "name", None), min_identity=self.min_identity,
                             anchors=sorted(self.anchor_set),
                             max_tries=self.max_tries, checks=checks, tries=tries, never_reached=labels, note=note)

    def _why(self, t: _Try) -> str:
        parts = []
        if t.score is not None and self.min_identity is not None and t.score < self.min_identity:
            parts.append(f"best {t.score:.3f}")
        for name, check in t.checks.items():
            if isinstance(check, dict) and check.get("failed"):
                parts.append(f"{name}: {', '.join(map(str, check['failed']))}")
        return "; ".join(parts) or "failed"

    # -- scoring and checks
    def _score(self, tries: list[_Try], indices: list[int], first: bool = False) -> None:
        if self.scorer is None or not tries:
            return
        try:
            import numpy as np

            emb = np.asarray(self.scorer.embed([t.image for t in tries]))
            if first:
                self._anchor_embedding = emb
            if self._anchor_embedding is None:
                return
            anchors = sorted({self.anchor_of(i) for i in indices})
            diff = np.asarray(self.scorer.difference(emb, self._anchor_embedding[anchors]))
            diff = diff[np.arange(len(indices)), [anchors.index(self.anchor_of(i)) for i in indices]]
        except Exception as err:  # a broken scorer must not fail the sheet
            log.warning("identity: the %s scorer failed (%s: %s); no identity scores are recorded",
                        getattr(self.scorer, "name", "identity"), type(err).__name__, err)
            self.scorer = None
            self.min_identity = None
            for t in tries:
                t.embedding = t.score = None
            return
        for t, e, d in zip(tries, emb, diff):
            t.embedding, t.score = e, round(1.0 - float(d), 6)

    def _checks(self, i: int, t: _Try, anchor: _Try) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not self.palette and not (self.check_views and i not in self.anchor_set):
            return out
        pose = _picture_pose(t)
        if pose is None:
            return out
        if self.palette:
            check_palette = self._import("palette", "check_palette")
            if check_palette is not None:
                out["palette"] = check_palette(t.image, pose, self.palette).to_dict()
        if self.check_views and i not in self.anchor_set:
            check_view = self._import("views", "check_view")
            anchor_pose = _picture_pose(anchor)
            if check_view is not None and anchor_pose is not None:
                out["view"] = check_view(anchor.image, anchor_pose, t.image, pose, scorer=self.scorer,
                                         sides=self.sides).to_dict()
        return out

    def _import(self, module: str, name: str) -> Any:
        import importlib

        try:
            return getattr(importlib.import_module(f"charstudio.identity.{module}"), name)
        except (ImportError, AttributeError) as err:
            if module not in self._warned:
                self._warned.add(module)
                log.warning("identity: the %s check is not available (%s)", module, err)
            return None


def _picture_pose(t: _Try) -> Any:
    """The pose a picture was drawn in, fitted to its size; None without one (or for several people)."""
    data = getattr(t.recipe, "pose", None)
    if not data:
        return None
    from ..pose import Pose

    try:
        pose = Pose.from_dict(data)
        return pose.fit(*t.image.size)
    except (CharstudioError, ValueError, KeyError, TypeError, AttributeError):
        return None


def measure(images: Sequence[Any], recipes: Sequence[Any], labels: Sequence[str], scorer: Any = None,
            card: Any = None) -> SheetIdentity:
    """The identity record of finished pictures, without re-rolls (a LoRA sweep): ``scorer`` is a
    `Scorer` (see `resolve_scorer`) or None for no scores."""
    run = IdentityRun(scorer, labels=labels, card=card, max_tries=1)
    best = run.measure(images, recipes)
    return run.finish(best, [[t] for t in best])
