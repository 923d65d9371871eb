"""Identity in the apps: the min-identity / max-tries controls for multi-picture runs, each
picture's identity score under it (drifting ones marked), and the Train app's identity plot.

The numbers come from the core (`SheetResult.identity_record`, `TrainingStep.identity`); this
module only shows them. One scale everywhere: identity score = 1 - the scorer's difference.
"""

from __future__ import annotations

import html
from typing import Any, Sequence

import ipywidgets as W

from ..sheets.identity import DEFAULT_MAX_TRIES
from .common import LABEL_PX_PER_CHAR, figure_png, labelled, png_bytes

DRIFT_COLOUR = "#d62728"
MODES = [("off", "off"), ("auto", "auto"), ("number", "number")]
TRIES_PX = f"{LABEL_PX_PER_CHAR * len('max tries') + 8}px"  # the apps' rule for labels that are never cut off


class IdentityControls:
    """"min identity" (off / auto: the scorer's threshold / a number) and "max tries" for sheets,
    turnarounds and expression sheets; `kwargs()` gives the core's ``min_identity=``,
    ``max_tries=`` (and ``scorer=`` when one is set here, e.g. a `Scorer` instance)."""

    def __init__(self, label_width: str = "110px") -> None:
        self.scorer: Any = None  # None: the core picks the best available scorer
        self.mode = W.Dropdown(options=MODES, value="off", layout=W.Layout(width="90px"),
                               tooltip="redraw views whose identity score is below this (off: never)")
        self.value = W.BoundedFloatText(value=0.8, min=-1.0, max=1.0, step=0.01, disabled=True,
                                        layout=W.Layout(width="70px"), tooltip="identity score, 1 = identical")
        self.max_tries = W.BoundedIntText(value=DEFAULT_MAX_TRIES, min=1, max=20, layout=W.Layout(width="60px"),
                                          tooltip="tries per view, the first included")
        self.mode.observe(lambda _c: setattr(self.value, "disabled", self.mode.value != "number"), names="value")
        self.widget = labelled("min identity", W.HBox([
            self.mode, self.value,
            W.Label("max tries", layout=W.Layout(width=TRIES_PX, min_width=TRIES_PX, flex="0 0 auto")),
            self.max_tries]), label_width)
        self.widget.add_class("charstudio-identity-controls")

    def min_identity(self) -> float | str | None:
        """None (off), "auto" or the number."""
        mode = self.mode.value
        return None if mode == "off" else "auto" if mode == "auto" else float(self.value.value)

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"min_identity": self.min_identity(), "max_tries": int(self.max_tries.value)}
        if self.scorer is not None:
            out["scorer"] = self.scorer
        return out


def bar_of(record: Any) -> float | None:
    """The score a picture must reach: the asked ``min_identity``, else the scorer's threshold."""
    if record is None or record.report is None:
        return None
    return record.min_identity if record.min_identity is not None else record.report.threshold


def scored_pictures(result: Any) -> list[dict[str, Any]]:
    """Per picture of a multi-picture result: label, identity score, whether it is the anchor and
    whether it drifts (below the bar); empty without identity scores."""
    record = getattr(result, "identity_record", None)
    bar = bar_of(record)
    if bar is None:
        return []
    rep = record.report
    labels = list(getattr(result, "labels", None) or rep.labels)
    checks = list(record.checks or [])
    return [{"label": labels[i] if i < len(labels) else f"picture {i + 1}", "score": s, "anchor": i == rep.anchor,
             "drifting": i != rep.anchor and s < bar, "bar": bar,
             "failed": _failed_checks(checks[i] if i < len(checks) else None)} for i, s in enumerate(rep.scores)]


def _failed_checks(checks: Any) -> list[str]:
    """The failed checks' short reasons (view: "mirror of the front"; palette: the parts off colour)."""
    out: list[str] = []
    for name, check in (checks or {}).items() if isinstance(checks, dict) else ():
        if isinstance(check, dict) and check.get("failed"):
            out.append(f"{name}: {', '.join(map(str, check['failed']))}")
    return out


def summary_line(result: Any) -> str:
    """One line for the status: the scorer once, the mean score, and the core's never-reached note."""
    record = getattr(result, "identity_record", None)
    if record is None or record.report is None:
        return "no identity scores (no scorer available)" if record is not None else ""
    drifting = [p["label"] for p in scored_pictures(result) if p["drifting"]]
    text = f"identity ({record.scorer}) mean {record.report.mean:.3f}"
    text += f", {len(drifting)} below {bar_of(record):.3f}" if drifting else ""
    note = getattr(result, "identity_note", None)
    return f"{text}; {note}" if note else text


class IdentityStrip:
    """The pictures of one multi-picture result in a row, each with its identity score under it;
    those below the bar get a red border and "drifting: 0.71 < 0.82"."""

    def __init__(self, size: int = 128) -> None:
        self.size = size
        self.pictures: list[dict[str, Any]] = []  # what is shown (see `scored_pictures`)
        self.header = W.HTML(value="")
        self.row = W.HBox(layout=W.Layout(flex_flow="row wrap", width="100%"))
        self.widget = W.VBox([self.header, self.row], layout=W.Layout(display="none"))
        self.widget.add_class("charstudio-identity")

    def clear(self) -> None:
        self.pictures = []
        self.header.value = ""
        self.row.children = ()
        self.widget.layout.display = "none"

    def show(self, result: Any, images: Sequence[Any] | None = None) -> None:
        """Show ``result``'s pictures with their scores (nothing when it has none)."""
        self.clear()
        pictures = scored_pictures(result)
        if not pictures:
            return
        record = result.identity_record
        images = list(images if images is not None else result.images)
        cells = []
        for picture, image in zip(pictures, images):
            cells.append(self._cell(picture, image))
        self.pictures = pictures
        self.header.value = (f"<small>identity against <b>{html.escape(pictures[record.report.anchor]['label'])}"
                             f"</b>, scored by <b>{html.escape(str(record.scorer))}</b> "
                             f"(1 = identical; marked below {pictures[0]['bar']:.3f})</small>")
        self.row.children = tuple(cells)
        self.widget.layout.display = ""

    def _cell(self, picture: dict[str, Any], image: Any) -> W.VBox:
        score, bar = picture["score"], picture["bar"]
        if picture["anchor"]:
            text = f"{score:.3f} (anchor)"
        elif picture["drifting"]:
            text = f'<span style="color:{DRIFT_COLOUR}"><b>drifting: {score:.2f} &lt; {bar:.2f}</b></span>'
        else:
            text = f"identity {score:.3f}"
        if picture["failed"]:
            text += f'<br><span style="color:{DRIFT_COLOUR}">{html.escape("; ".join(picture["failed"]))}</span>'
        border = f"3px solid {DRIFT_COLOUR}" if picture["drifting"] else "3px solid transparent"
        cell = W.VBox([W.Image(value=png_bytes(image, self.size), format="png",
                               layout=W.Layout(width=f"{self.size}px")),
                       W.HTML(value=f"<small>{html.escape(picture['label'][:24])}<br>{text}</small>")],
                      layout=W.Layout(border=border, margin="2px", width=f"{self.size + 10}px"))
        cell.add_class("charstudio-drifting" if picture["drifting"] else "charstudio-identity-ok")
        return cell


def identity_figure(points: Sequence[dict[str, Any]]) -> bytes:
    """Trained vs weight-0 identity over the validation steps, the scorer's threshold as a line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 2.4))
    ax = fig.subplots()
    steps = [p["step"] for p in points]
    ax.plot(steps, [p["trained"] for p in points], "o-", color="tab:green", lw=1.2, ms=3, label="with the LoRA")
    base = [(p["step"], p["base"]) for p in points if p.get("base") is not None]
    if base:
        ax.plot(*zip(*base), "s--", color="tab:gray", lw=1.0, ms=3, label="weight 0")
    threshold = next((p.get("threshold") for p in reversed(points) if p.get("threshold") is not None), None)
    if threshold is not None:
        ax.axhline(threshold, color=DRIFT_COLOUR, lw=0.8, ls=":", label=f"threshold {threshold:.3f}")
    scorer = next((p.get("scorer") for p in reversed(points) if p.get("scorer")), "identity")
    ax.set_title(f"identity against the training pictures ({scorer})", fontsize=8)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("identity", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    return figure_png(fig)
