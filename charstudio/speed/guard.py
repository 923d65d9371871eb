"""The quality guard of draft mode: is a draft still the character its full-quality re-draw is?

`compare(studio, draft, full=None)` takes a draft picture or sheet (a `Result` or a `SheetResult`
drawn with ``speed="draft"``) and, unless ``full`` is given, re-draws each of its recipes at full
quality with the same seed (`charstudio.speed.draft.finish`; a sheet's reference attention is
applied again, to the re-drawn first picture). Both sets are scored by one identity scorer (the one
the sheet used, else `sheets.identity.resolve_scorer`'s choice) on the identity-score scale
(1 - the scorer's difference; higher is more alike):

- ``draft`` / ``full``: each picture against its anchor within its own set: a sheet's first
  picture (a pack's: its outfit's first), or ``anchor`` (a picture, a path, or a card whose first
  ``references`` picture is used) for both sets; a lone picture without one has no anchor score;
- ``draft_vs_full``: each draft against its own finished picture (same seed, same recipe).

A picture passes by the sheet's rule: its score against the anchor (without an anchor, against its
finished picture) reaches the threshold, the sheet's ``min_identity`` when it set one, else the
scorer's own (`Scorer.min_score`). The anchors themselves always pass. The `GuardReport` prints as
a table (`GuardReport.table`) and is JSON-ready (`GuardReport.to_dict`).

A draft sheet re-rolls by the same rule as any sheet: ``studio.sheet(..., speed="draft",
min_identity=...)`` redraws a view below the bar with the next seed from its draft recipe
(`charstudio.sheets.identity.IdentityRun.reroll`), and `compare` judges what it kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)


@dataclass
class GuardRow:
    """One picture: its label and seed, the picture it is scored against (None: no anchor), its
    draft and full-quality scores, the draft against its finished picture, and pass/fail."""

    label: str
    seed: int | None
    anchor: int | None
    draft: float | None
    full: float | None
    draft_vs_full: float
    threshold: float
    passed: bool
    full_passed: bool

    @property
    def is_anchor(self) -> bool:
        return self.anchor is not None and self.anchor < 0


@dataclass
class GuardReport:
    """Draft vs full-quality identity, per picture (`rows`), with the scorer, its threshold, what
    the anchor was, and how the draft was drawn. ``draft_result`` / ``full_result``: the pictures."""

    scorer: str
    threshold: float
    anchor: str
    method: str
    rows: list[GuardRow] = field(default_factory=list)
    draft_result: Any = None
    full_result: Any = None

    @property
    def passed(self) -> bool:
        """Every draft picture reaches the threshold."""
        return all(r.passed for r in self.rows)

    @property
    def failed(self) -> list[str]:
        """The labels of the draft pictures below the threshold."""
        return [r.label for r in self.rows if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        rows = [{"label": r.label, "seed": r.seed, "anchor": "self" if r.is_anchor else r.anchor, "draft": r.draft,
                 "full": r.full, "draft_vs_full": r.draft_vs_full, "threshold": r.threshold, "passed": r.passed,
                 "full_passed": r.full_passed} for r in self.rows]
        return {"scorer": self.scorer, "threshold": self.threshold, "anchor": self.anchor, "method": self.method,
                "passed": self.passed, "failed": self.failed, "rows": rows}

    def table(self) -> str:
        """A text table: one line per picture, draft and full scores side by side."""
        def cell(row: GuardRow, value: float | None) -> str:
            return "anchor" if row.is_anchor else ("-" if value is None else f"{value:.3f}")

        width = max([len("picture"), *(len(r.label) for r in self.rows)])
        lines = [f"identity guard: {self.scorer} scorer, threshold {self.threshold:.3f}, anchor: {self.anchor}",
                 f"draft: {self.method}",
                 f"{'picture':<{width}}  {'seed':>6}  {'draft':>7}  {'full':>7}  {'draft~full':>10}  pass"]
        for r in self.rows:
            seed = "-" if r.seed is None else str(r.seed)
            lines.append(f"{r.label:<{width}}  {seed:>6}  {cell(r, r.draft):>7}  {cell(r, r.full):>7}  "
                         f"{r.draft_vs_full:>10.3f}  {'yes' if r.passed else 'NO'}")
        verdict = "every draft picture reaches it" if self.passed else \
            f"{len(self.failed)} of {len(self.rows)} below it: {', '.join(self.failed)}"
        lines.append(f"{verdict}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def compare(studio: Studio, draft: Any, full: Any = None, *, scorer: Any = None, anchor: Any = None,
            threshold: float | None = None) -> GuardReport:
    """Identity of a draft picture or sheet next to its full-quality re-draw (see the module docstring).

    ``draft``: a `Result` or `SheetResult`. ``full``: the same pictures at full quality (a result
    with as many pictures), or None to re-draw them now with `finish` (same seed). ``scorer``: an
    identity scorer or its name (default: the sheet's, else the automatic choice). ``anchor``: a
    picture, a path or a card to score every picture against (default: a sheet's first picture).
    ``threshold``: the bar on the identity-score scale (default: the sheet's ``min_identity``, else
    the scorer's own threshold)."""
    # 1. The draft's pictures, recipes and labels; the full-quality ones (re-drawn when not given).
    images, recipes = list(getattr(draft, "images", None) or []), list(getattr(draft, "recipes", None) or [])
    if not images or len(images) != len(recipes):
        raise ConfigError("draft", type(draft).__name__, "a Result or SheetResult with one recipe per picture "
                                                         "(what studio.generate / studio.sheet return)")
    record = getattr(draft, "identity_record", None)
    labels = list(getattr(draft, "labels", None) or []) or [f"picture {i + 1}" for i in range(len(images))]
    if full is None:
        full = redraw_full(studio, draft)
    full_images = list(getattr(full, "images", full) or [])
    if len(full_images) != len(images):
        raise ConfigError("full", f"{len(full_images)} picture(s)", f"the same {len(images)} picture(s) at full "
                                                                      "quality, or None to re-draw them now")
    # 2. The scorer and the bar: the sheet's, unless given.
    the_scorer = _scorer(scorer, record, studio)
    bar = threshold if threshold is not None else (
        record.min_identity if record is not None and record.min_identity is not None else the_scorer.min_score)
    bar = round(float(bar), 6)
    # 3. Embed everything once; score each set against its own anchors, and each draft against its full.
    import numpy as np

    anchor_image, anchor_name = _anchor_picture(anchor)
    extra = [anchor_image] if anchor_image is not None else []
    emb = np.asarray(the_scorer.embed([*images, *full_images, *extra]))
    n = len(images)
    d_emb, f_emb = emb[:n], emb[n:2 * n]
    cross = 1.0 - np.diag(np.asarray(the_scorer.difference(d_emb, f_emb)))
    anchors = _anchors(record, n) if anchor_image is None and record is not None else None
    if anchor_image is not None:
        d_sc = 1.0 - np.asarray(the_scorer.difference(d_emb, emb[2 * n:]))[:, 0]
        f_sc = 1.0 - np.asarray(the_scorer.difference(f_emb, emb[2 * n:]))[:, 0]
    elif anchors is not None:
        d_sc = np.array([1.0 - the_scorer.difference(d_emb[i:i + 1], d_emb[a:a + 1])[0, 0] for i, a in enumerate(anchors)])
        f_sc = np.array([1.0 - the_scorer.difference(f_emb[i:i + 1], f_emb[a:a + 1])[0, 0] for i, a in enumerate(anchors)])
        anchor_name = "the sheet's first picture" if len(set(anchors)) == 1 else "each group's first picture"
    else:
        d_sc = f_sc = None
        anchor_name = "none (each draft against its finished picture)"
    # 4. One row per picture.
    rows = []
    for i in range(n):
        own = anchors is not None and anchors[i] == i
        ds = None if d_sc is None else round(float(d_sc[i]), 6)
        fs = None if f_sc is None else round(float(f_sc[i]), 6)
        cr = round(float(cross[i]), 6)
        judged_d, judged_f = (cr, cr) if ds is None else (ds, fs)
        rows.append(GuardRow(label=labels[i] if i < len(labels) else f"picture {i + 1}",
                             seed=getattr(recipes[i], "seed", None),
                             anchor=-1 if own else (None if anchors is None else anchors[i]),
                             draft=ds, full=fs, draft_vs_full=cr, threshold=bar,
                             passed=own or judged_d >= bar, full_passed=own or judged_f >= bar))
    report = GuardReport(scorer=the_scorer.name, threshold=bar, anchor=anchor_name, method=_method(recipes[0]),
                         rows=rows, draft_result=draft, full_result=full)
    log.info("identity guard: %s", report.table().splitlines()[-1])
    return report


def redraw_full(studio: Studio, draft: Any) -> Any:
    """The draft's recipes re-drawn at full quality with the same seeds (`speed.draft.finish`), in
    one batch; a sheet's reference attention (its settings' ``reference_strength``) is applied again,
    recorded from the re-drawn first picture. Returns a `Result`."""
    from ..result import Result
    from .draft import finish

    recipes = list(draft.recipes)
    if not any(getattr(r, "draft", None) for r in recipes):
        raise ConfigError("draft", "a full-quality result", "a picture or sheet drawn with speed='draft' (its "
                                                             "recipes record the draft), or pass full= to compare two results")
    finished = [finish(r) if getattr(r, "draft", None) else r for r in recipes]
    settings = dict(getattr(draft, "settings", None) or {})
    strength = float(settings.get("reference_strength") or 0.0)
    if settings.get("ip_adapter") or settings.get("reference_image"):
        log.warning("identity guard: the full re-draw leaves out the sheet's IP-Adapter / reference picture; pass "
                    "full= (the sheet drawn at full quality) to compare against it")
    if strength <= 0 or len(finished) < 2 or settings.get("reference_image"):
        return studio.run_batch(finished)
    from ..sheets.reference import reference_attention

    with reference_attention(studio.components["unet"], strength) as bank:
        bank.record()
        first = studio.run(finished[0])
        bank.read()
        rest = studio.run_batch(finished[1:])
    return Result([*first.images, *rest.images], [*first.recipes, *rest.recipes], {})


def _scorer(scorer: Any, record: Any, studio: Studio) -> Any:
    from ..sheets.identity import resolve_scorer

    name = scorer if scorer is not None else getattr(record, "scorer", None)
    found = resolve_scorer(name, model=studio.model_id)
    if found is None:
        raise ConfigError("scorer", scorer, "an identity scorer ('mini', 'ccip', 'clip', a CCIP folder or a Scorer): "
                                            "the guard needs one to compare draft and full pictures")
    return found


def _anchors(record: Any, n: int) -> list[int]:
    """Per picture, the picture it is scored against: the last of the record's anchors at or before it."""
    marks = sorted(a for a in (getattr(record, "anchors", None) or []) if 0 <= a < n)
    if not marks:
        report = getattr(record, "report", None)
        marks = [int(getattr(report, "anchor", 0) or 0)]
    return [max([a for a in marks if a <= i], default=marks[0]) for i in range(n)]


def _anchor_picture(anchor: Any) -> tuple[Any, str]:
    """(the anchor picture, what it is) for a picture, a path or a card (its first reference)."""
    if anchor is None:
        return None, ""
    if hasattr(anchor, "getbands"):
        return anchor.convert("RGB"), "the given picture"
    refs = getattr(anchor, "references", None)
    if refs is not None:
        if not refs:
            raise ConfigError("anchor", getattr(anchor, "name", anchor), "a card with a `references` picture, a "
                                                                          "picture or a path")
        path = Path(refs[0]).expanduser()
        source = getattr(anchor, "source", None)
        if not path.is_absolute() and source:
            path = Path(source).parent / path  # a card's references are relative to its file
        what = f"card {anchor.name}: references[0]"
    elif isinstance(anchor, (str, Path)):
        path, what = Path(anchor).expanduser(), "anchor"
    else:
        raise ConfigError("anchor", type(anchor).__name__, "a picture, a path to one, or a card with `references`")
    from ..io_utils import open_image

    return open_image(path, what).convert("RGB"), f"{what} ({path.name})"


def _method(recipe: Any) -> str:
    """How the draft was drawn, in one line (`speed.draft.describe` for a draft recipe)."""
    if getattr(recipe, "draft", None):
        try:
            from .draft import describe

            return describe(recipe)
        except (ImportError, AttributeError, KeyError, TypeError, ValueError) as err:
            log.debug("describe failed: %s", err)
    parts = [f"{recipe.num_inference_steps} steps", f"{recipe.scheduler}", f"CFG {recipe.guidance_scale:g}"]
    if getattr(recipe, "feature_cache", None):
        parts.append(f"feature cache every {recipe.feature_cache['interval']}")
    return ("" if getattr(recipe, "draft", None) else "not a draft: ") + ", ".join(parts)

