"""Drawing a storyboard: `draw_storyboard` (every panel, re-rolled until its characters are
themselves), `redraw_panel` (one panel again, or its words edited), and the `Storyboard` they
return, saved as a folder.

The folder (written whole, `io_utils.staged_folder`; an existing storyboard is never replaced
unless ``overwrite``): ``page.png`` and ``page.pdf`` (the panels with numbers, captions and
lines), ``panel-NN.png`` (each panel as drawn, its recipe in the PNG, so it re-runs without the
cards), ``anchor-<card>.png`` (each card's anchor picture), ``script.yaml`` (the script, with any
edits) and ``storyboard.json``: the settings (model, scorer, bar, tries, processes), and per panel
its recipe, characters (region box, identity score, checks), every try (seed, scores, passed,
kept) and the page's crop.

Re-rolls (``min_identity``: a number on the identity-score scale, "auto" for the scorer's own
threshold, None for none): a panel whose characters are not all at or above the bar (or fail a
palette check) is drawn again at the next seed (try t of a panel at seed s uses s + t), up to
``max_tries`` tries; the best try is kept (passing first, then the highest lowest score).

Under ``accelerate launch --num_processes N`` the panels split over the processes (panel i goes
to process i mod N), each process draws the anchors itself and re-rolls its own panels; the panels
are gathered and the first process writes the folder: the same seeds, files and pictures as one
process.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import InputFileError, OutputError
from ..sheets.identity import DEFAULT_MAX_TRIES, check_max_tries, check_min_identity, resolve_scorer
from .page import PagePanel, compose_page, panel_height, save_pdf
from .panels import PanelScorer, anchor_config, check_poses, load_cast, panel_config, rank
from .script import Script, load_script

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)

JSON_NAME, PAGE_NAME, PDF_NAME, SCRIPT_NAME = "storyboard.json", "page.png", "page.pdf", "script.yaml"
PNG_KEY = "charstudio_storyboard"


@dataclass
class PanelResult:
    """One drawn panel: the kept picture and recipe, its characters (name, label, box, score,
    checks), every try, and the page's crop of it."""

    index: int
    image: Any
    recipe: Any
    characters: list[dict[str, Any]]
    tries: list[dict[str, Any]]
    passed: bool
    crop: list[float] | None = None

    def record(self, file: str | None = None) -> dict[str, Any]:
        return {"index": self.index, "file": file, "passed": self.passed, "crop": self.crop,
                "characters": self.characters, "tries": self.tries, "recipe": self.recipe.to_dict()}


@dataclass
class Storyboard:
    """A drawn script: its panels, each card's anchor picture, and how it was drawn."""

    script: Script
    panels: list[PanelResult]
    anchors: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None  # where it was saved or loaded from

    @property
    def never_reached(self) -> list[int]:
        """Panels (numbered from 1) whose characters never all reached the bar."""
        return [p.index + 1 for p in self.panels if not p.passed]

    @property
    def note(self) -> str | None:
        """One line naming the panels that never reached the bar, or None."""
        if not self.never_reached:
            return None
        bar = self.settings.get("min_identity")
        goal = f"identity >= {bar:.3f} ({self.settings.get('scorer')})" if bar is not None else "their checks"
        worst = "; ".join(f"panel {p.index + 1}: " + ", ".join(
            f"{c['name']} {c['score']:.3f}" if c.get("score") is not None else c["name"] for c in p.characters)
            for p in self.panels if not p.passed)
        return (f"storyboard: {len(self.never_reached)} of {len(self.panels)} panel(s) never reached {goal} in "
                f"{self.settings.get('max_tries')} tries: {worst}")

    @property
    def tries(self) -> list[int]:
        """How many pictures each panel took."""
        return [len(p.tries) for p in self.panels]

    def page(self) -> Any:
        """The page: every panel (its shot's crop) with its number, caption and line."""
        native = int(self.settings.get("native_size") or 64)
        items = [PagePanel(p.image, p.index + 1, self.script.panels[p.index].caption, self.script.panels[p.index].line,
                           p.crop) for p in self.panels]
        return compose_page(items, title=self.script.title, height=panel_height(native))

    def summary(self, files: dict[str, Any] | None = None) -> dict[str, Any]:
        files = files or {}
        return {"title": self.script.title, "settings": self.settings, "script": self.script.to_dict(),
                "tries": self.tries, "never_reached": self.never_reached, "note": self.note,
                "anchors": {n: files.get(f"anchor-{n}") for n in self.anchors},
                "panels": [p.record(files.get(f"panel-{p.index}")) for p in self.panels],
                "files": sorted(v for v in files.values() if v)}

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False, field: str = "out") -> list[Path]:
        """Write the folder (see the module docstring); returns its files, the page first."""
        import yaml

        from ..io_utils import atomic_write, refuse_package_path, staged_folder
        from ..provenance.png import write_png

        target = refuse_package_path(directory, field)
        panel_names = {f"panel-{p.index}": f"panel-{p.index + 1:02d}.png" for p in self.panels}
        anchor_names = {f"anchor-{n}": f"anchor-{n}.png" for n in self.anchors}
        names = {**panel_names, **anchor_names, "page": PAGE_NAME, "pdf": PDF_NAME, "script": SCRIPT_NAME,
                 "json": JSON_NAME}
        if not overwrite:
            taken = [n for n in names.values() if (target / n).exists()]
            if taken:
                raise OutputError(f"{field}={str(target)!r}: {str(target / taken[0])!r} already exists: pass "
                                  "overwrite=True (CLI: --overwrite) or choose another folder")
        page = self.page()
        text = json.dumps(self.summary(names), indent=2)
        script_text = yaml.safe_dump(self.script.to_dict(), sort_keys=False, allow_unicode=True)
        with staged_folder(target, overwrite=overwrite, field=field, replaces=_old_files) as stage:
            for p in self.panels:  # through the one PNG writer: recipe, panel chunk, C2PA manifest
                write_png(stage / panel_names[f"panel-{p.index}"], p.image, p.recipe,
                          text={PNG_KEY: json.dumps({"panel": p.index + 1, "characters": p.characters,
                                                     "tries": p.tries})})
            for n, (image, recipe) in self.anchors.items():
                write_png(stage / anchor_names[f"anchor-{n}"], image, recipe)
            write_png(stage / PAGE_NAME, page, model=self.panels[0].recipe.model if self.panels else None)
            atomic_write(stage / PDF_NAME, lambda tmp: save_pdf(page, tmp))
            atomic_write(stage / SCRIPT_NAME, lambda tmp: Path(tmp).write_text(script_text, encoding="utf-8"))
            atomic_write(stage / JSON_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        self.folder = target
        return [target / PAGE_NAME, target / PDF_NAME, *(target / n for n in panel_names.values()),
                *(target / n for n in anchor_names.values()), target / SCRIPT_NAME, target / JSON_NAME]

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Storyboard:
        """A saved storyboard (its pictures, recipes, scores and script) from its folder."""
        from PIL import Image

        from ..recipe.config import GenerationConfig

        root = Path(folder).expanduser()
        path = root / JSON_NAME
        if not path.is_file():
            raise InputFileError(f"storyboard={str(root)!r}: no {JSON_NAME} in it (not a storyboard folder)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            script = load_script(data["script"])

            def picture(name: str) -> Any:
                if not name or Path(name).name != name:
                    raise ValueError(f"bad file name {name!r}")
                with Image.open(root / name) as im:
                    return im.convert("RGB")

            panels = [PanelResult(p["index"], picture(p["file"]), GenerationConfig.from_dict(p["recipe"]),
                                  p["characters"], p["tries"], bool(p["passed"]), p.get("crop"))
                      for p in data["panels"]]
            anchors = {n: (picture(f), _recipe(root / f)) for n, f in data["anchors"].items()}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputFileError(f"storyboard={str(root)!r}: {JSON_NAME} or its pictures cannot be read: {err}") from None
        return cls(script, panels, anchors, data.get("settings") or {}, folder=root)


def _board_scorer(studio: Studio, scorer: Any, recorded: str | None) -> Any:
    """``scorer`` when given, else the scorer the board recorded (by name), else the automatic one."""
    from ..errors import ConfigError

    if scorer is not None or not recorded:
        return resolve_scorer(scorer, model=studio.model_id)
    try:
        return resolve_scorer(recorded, model=studio.model_id)
    except ConfigError:  # a Scorer object of the user's own: its name cannot be looked up
        log.warning("storyboard: the board's scorer %r cannot be loaded by name; the automatic one scores the "
                    "redraw (pass scorer=...)", recorded)
        return resolve_scorer(None, model=studio.model_id)


def _recipe(path: Path) -> Any:
    """The recipe in a PNG's metadata, or None (an anchor is re-saved with it when it has one)."""
    from ..recipe.metadata import read_recipe

    try:
        return read_recipe(path)[1]
    except Exception:  # noqa: BLE001 - the anchor picture is what matters; its recipe is a record
        return None


def _old_files(old: Path) -> list[str]:
    """The files an existing storyboard in ``old`` wrote (those its storyboard.json lists)."""
    try:
        files = json.loads((old / JSON_NAME).read_text(encoding="utf-8")).get("files") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str) and f == Path(f).name and not f.startswith(".")]


def check_out(out: Any, overwrite: bool, field: str = "out") -> Path:
    """``out`` checked before any drawing: a folder the staging writer accepts, and one that holds
    no storyboard unless ``overwrite``."""
    from ..io_utils import check_output_dir, check_staged_target

    check_staged_target(out, field=field)
    target = check_output_dir(out, field=field)
    if not overwrite and any((target / n).exists() for n in (JSON_NAME, PAGE_NAME)):
        raise OutputError(f"{field}={str(target)!r} already holds a storyboard: pass overwrite=True "
                          "(CLI: --overwrite) or choose another folder")
    return target


class _Drawer:
    """Draws panels with re-rolls; progress counts every picture (anchors, panels, re-rolls)."""

    def __init__(self, studio: Studio, scorer: PanelScorer, max_tries: int, rerolls: bool, progress: Callable | None,
                 cancel: Any, callbacks: Sequence[Callable], total: int):
        self.studio, self.scorer, self.max_tries, self.rerolls = studio, scorer, max_tries, rerolls
        self.progress, self.cancel, self.callbacks = progress, cancel, callbacks
        self.drawn, self.total = 0, total

    def draw(self, config: Any) -> tuple[Any, Any]:
        if self.cancel is not None:
            self.cancel.check()
        report = None
        if self.progress is not None:
            from ..callbacks import StepProgress

            k, total, progress = self.drawn, max(self.total, self.drawn + 1), self.progress
            report = lambda p: progress(StepProgress(image=k + 1, images=total, step=p.step, steps=p.steps))  # noqa: E731
        res = self.studio.run(config, callbacks=self.callbacks, progress=report, cancel=self.cancel)
        self.drawn += 1
        return res.images[0], res.recipes[0]

    def panel(self, index: int, config: Any, chars: list[dict], crop: Any, first_seed: int) -> PanelResult:
        tries, best = [], None
        for t in range(self.max_tries if self.rerolls else 1):
            image, recipe = self.draw(config.replace(seed=first_seed + t))
            measured = self.scorer.score(image, recipe, chars)
            record = {"seed": recipe.seed, **measured, "kept": False}
            tries.append(record)
            if best is None or rank(record) > rank(best[0]):
                best = (record, image, recipe)
            if measured["passed"]:
                break
            if t + 1 < self.max_tries and self.rerolls:
                self.total += 1
        record, image, recipe = best
        record["kept"] = True
        kept = [dict(c, score=record["scores"].get(c["name"]), checks=record["checks"].get(c["name"])) for c in chars]
        return PanelResult(index, image, recipe, kept, tries, bool(record["passed"]),
                           [round(v, 2) for v in crop] if crop is not None else None)


def draw_storyboard(studio: Studio, script: Any, *, out: str | os.PathLike | None = None,
                    min_identity: float | str | None = "auto", max_tries: int = DEFAULT_MAX_TRIES, scorer: Any = None,
                    seed: int | None = None, steps: int | None = None, overwrite: bool = False,
                    progress: Callable | None = None, cancel: Any = None, callbacks: Sequence[Callable] = (),
                    **settings: Any) -> Storyboard:
    """Draw every panel of ``script`` (a YAML file, YAML text, a dict or a `Script`) and, with
    ``out``, write the storyboard folder (see the module docstring).

    ``seed``: the first panel's seed (else the script's, else one drawn at random; panel i uses
    seed + 16 i unless it gives its own). ``steps``: denoising steps (else the script's, else the
    model's). ``scorer``: the identity scorer (None/"auto": the best available; "none": no scores).
    ``settings``: other `Studio.make_config` settings shared by every picture (guidance_scale, ...).
    """
    import random

    from ..recipe.config import MAX_SEED
    from ..sheets.distributed import distributed_state, draw_split, is_main, processes, share, shared_seed
    from .script import MAX_PANELS, SEED_STRIDE

    # 1. Check the script, its cards and poses, the options and the output before any drawing.
    script = load_script(script)
    cards = load_cast(script)
    check_poses(script)
    asked, max_tries = check_min_identity(min_identity), check_max_tries(max_tries)
    if out is not None:
        check_out(out, overwrite)
    steps = steps if steps is not None else script.steps
    state = distributed_state()
    base = seed if seed is not None else script.seed
    if base is None:  # one seed for every process: rank 0's
        base = shared_seed(random.randint(0, MAX_SEED - SEED_STRIDE * MAX_PANELS), state)
    the_scorer = resolve_scorer(scorer, model=studio.model_id)
    bar = None if asked is None or the_scorer is None else (
        round(float(the_scorer.min_score), 6) if asked == "auto" else float(asked))

    # 2. Each card's anchor (every process draws them: two or three pictures).
    mine = share(range(len(script.panels)), state)
    drawer = _Drawer(studio, None, max_tries, bar is not None and max_tries > 1, progress, cancel, callbacks,
                     total=len(cards) + len(mine))
    anchors = {}
    for name, card in cards.items():
        anchors[name] = drawer.draw(anchor_config(studio, card, seed=base, steps=steps, settings=settings))
    drawer.scorer = PanelScorer(the_scorer, {n: im for n, (im, _) in anchors.items()}, cards, bar)

    # 3. This process's panels, each re-rolled until it passes or runs out of tries; then gathered.
    def draw(todo: list[int]) -> dict[int, PanelResult]:
        done = {}
        for i in todo:
            first = script.panel_seed(i, base)
            config, chars, crop = panel_config(studio, script, i, cards, seed=first, steps=steps, settings=settings)
            done[i] = drawer.panel(i, config, chars, crop, first)
        return done

    panels = list(draw_split(len(script.panels), draw, state).values())

    # 4. The storyboard; the first process writes it.
    board = Storyboard(script, panels, anchors, settings={
        "model": studio.model_id, "native_size": int(studio.default_size), "seed": base, "steps": steps,
        "scorer": getattr(the_scorer, "name", None), "asked": asked, "min_identity": bar, "max_tries": max_tries,
        "processes": processes(state)})
    if board.note:
        log.warning("%s", board.note)
    if out is not None and is_main(state):
        board.save(out, overwrite=overwrite)
    return board


def redraw_panel(studio: Studio, board: Storyboard | str | os.PathLike, panel: int, *, seed: int | None = None,
                 redraw: bool | None = None, caption: str | None = None, line: str | None = None,
                 min_identity: Any = "board", max_tries: int | None = None, scorer: Any = None,
                 out: str | os.PathLike | None = None, progress: Callable | None = None, cancel: Any = None,
                 callbacks: Sequence[Callable] = ()) -> Storyboard:
    """Panel ``panel`` (numbered from 1) again: edit its ``caption`` or ``line``, and/or re-draw its
    picture (``redraw``; by default when ``seed`` is given or no words are edited) from its recipe
    at ``seed`` (default: the seed after its last try), re-rolled as the board was (``min_identity``
    and ``max_tries`` default to the board's). The page is rewritten: into ``out``, else the folder
    the board was loaded from or saved to (its own files replaced, nothing else)."""
    from .script import clean_text

    if not isinstance(board, Storyboard):
        board = Storyboard.load(board)
    count = len(board.panels)
    if isinstance(panel, bool) or not isinstance(panel, int) or not 1 <= panel <= count:
        from ..errors import ConfigError

        raise ConfigError("panel", panel, f"a panel number from 1 to {count}")
    index = panel - 1
    entry = board.script.panels[index]
    if caption is not None:
        entry.caption = clean_text(f"panels[{index}].caption", caption)
    if line is not None:
        entry.line = clean_text(f"panels[{index}].line", line)
    if redraw is None:
        redraw = seed is not None or (caption is None and line is None)
    if redraw:
        old = board.panels[index]
        asked = check_min_identity(board.settings.get("asked") if min_identity == "board" else min_identity)
        tries = check_max_tries(max_tries if max_tries is not None else board.settings.get("max_tries", DEFAULT_MAX_TRIES))
        the_scorer = _board_scorer(studio, scorer, board.settings.get("scorer"))
        bar = None if asked is None or the_scorer is None else (
            round(float(the_scorer.min_score), 6) if asked == "auto" else float(asked))
        cards = {}
        try:
            cards = load_cast(board.script)  # for palette checks; the recipe needs no card
        except Exception as err:  # noqa: BLE001 - a card gone since does not stop a redraw
            log.info("storyboard: cards not loaded for the redraw (%s); no palette checks", err)
        scoring = PanelScorer(the_scorer, {n: im for n, (im, _) in board.anchors.items()}, cards, bar)
        drawer = _Drawer(studio, scoring, tries, bar is not None and tries > 1, progress, cancel, callbacks, total=1)
        first = seed if seed is not None else max(int(t["seed"]) for t in old.tries) + 1
        chars = [{k: c[k] for k in ("name", "label", "box")} for c in old.characters]
        new = drawer.panel(index, old.recipe, chars, old.crop, first)
        entry.seed = first
        board.panels[index] = new
    target = out if out is not None else board.folder
    if target is not None:
        board.save(target, overwrite=True)
    return board
