"""mini's behaviours in draft mode, next to mini at its default 20 steps (issue 38, "A few-step mini").

    python -m charstudio.mini.draft_check measure [--steps 4] [--lora FILE] [--preset mini-lcm]

Each behaviour is measured by `charstudio.mini.evaluate`'s own function, once at mini's default
(20 steps, its scheduler and CFG) and once with every recipe drafted (``speed="draft"``, see
`charstudio.speed.draft`: mini's 4-step LoRA "mini-lcm" when its file is there or ``--lora`` gives
one, else the feature cache with fewer steps):

- hair colour: the share of seeds whose hair is the asked colour (`evaluate.hair_colour_accuracy`);
- pose: IoU of the figure with its skeleton, and the margin over another pose's (`pose_alignment`);
- sheet consistency: colour distance within a sheet over that across seeds (`sheet_consistency`;
  lower is more consistent);
- interpolation evenness: of the hair hue's path, red to blue (`hue_path`, even frame spacing);
- identity: the draft sheet's identity scores against its first picture next to the same sheet at
  full quality (`charstudio.speed.guard.compare`), against mini's scorer's threshold;
- the cape LoRA (``zorbi``, `regional_check.lora_file`): the share of seeds showing the red cape
  with the cape LoRA alone at 20 steps, and with the cape LoRA and the 4-step LoRA together.

Every figure is also given in points (0-100, higher is better; the sheet's as 100 x (1 - ratio)) so
the draft's can be held within 10 points of the default's (`WITHIN_POINTS`).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .evaluate import (
    SHEET_POSES,
    feature_rate,
    hair_colour_accuracy,
    hue_path,
    loose_card,
    pose_alignment,
    sheet_consistency,
)

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)

DEFAULT_STEPS = 20  # mini's own (`PRESETS["mini"]`), what evaluate.py measures at
WITHIN_POINTS = 10.0  # the target: each behaviour within 10 points of its default figure
CAPE_LORA = "zorbi"


@contextmanager
def drafting(studio: Studio, preset: str | None = None, steps: int | None = None,
             scheduler: str | None = None) -> Iterator[None]:
    """Inside the block every recipe the studio makes is a draft: ``make_config`` gets
    ``speed="draft"`` (and ``draft_preset``) unless the caller gives a speed, so `evaluate`'s
    functions, sheets and interpolations all draw drafts as a user's ``speed="draft"`` would.
    ``steps``: the draft's step count instead of the preset's (a preset without fixed timesteps);
    ``scheduler``: the draft's sampler instead of the preset's (e.g. "tcd" instead of mini-lcm's "lcm")."""
    real = studio.make_config

    def make_config(*args: Any, **settings: Any) -> Any:
        settings.setdefault("speed", "draft")
        if preset is not None and settings["speed"] == "draft":
            settings.setdefault("draft_preset", preset)
        config = real(*args, **settings)
        if steps is not None and config.draft and not config.timesteps and config.num_inference_steps != steps:
            config = config.replace(num_inference_steps=steps)
        if scheduler is not None and config.draft and config.scheduler != scheduler:
            config = config.replace(scheduler=scheduler)
        return config

    studio.make_config = make_config  # type: ignore[method-assign]  # this instance only, for the block
    try:
        yield
    finally:
        del studio.make_config  # the class's method again


def behaviours(studio: Studio, *, seeds: int = 10, steps: int = DEFAULT_STEPS) -> dict[str, Any]:
    """Hair colour, pose, sheet consistency and interpolation evenness, as `evaluate` measures them,
    on ``seeds`` seeds (hair: per colour; pose: ``seeds`` - 2, at least 2); the sheet itself is kept
    under ``"sheet_result"`` for the identity comparison."""
    hair = hair_colour_accuracy(studio, seeds=range(seeds), steps=steps)
    pose = pose_alignment(studio, seeds=range(max(2, seeds - 2)), steps=steps)
    sheet = sheet_consistency(studio, loose_card(), SHEET_POSES, steps=steps)
    path = hue_path(studio, steps=steps)
    return {
        "hair_colour": {"min": hair["min"], "mean": hair["mean"], "per_colour": hair["per_colour"]},
        "pose": {"iou": pose["iou"], "margin": pose["margin"]},
        "sheet": {"ratio": sheet["ratio"], "distance_sheet": sheet["distance_sheet"]},
        "interpolation": {"evenness": path["evenness"], "inversions": path["inversions"], "ends": path["ends"]},
        "sheet_result": sheet["sheet"],
    }


def points(figures: dict[str, Any]) -> dict[str, float]:
    """Each behaviour in points, 0-100, higher is better."""
    out = {"hair_colour": 100.0 * figures["hair_colour"]["mean"], "pose_iou": 100.0 * figures["pose"]["iou"],
           "sheet_consistency": 100.0 * (1.0 - figures["sheet"]["ratio"]),
           "interpolation_evenness": 100.0 * figures["interpolation"]["evenness"]}
    if "cape" in figures:
        out["cape"] = 100.0 * figures["cape"]["rate"]
    return {k: round(v, 1) for k, v in out.items()}


def cape_rate(studio: Studio, seeds: int = 10, steps: int = DEFAULT_STEPS) -> dict[str, Any]:
    """The red cape's rate for the cape LoRA's character with the shipped cape LoRA on (`evaluate.feature_rate`)."""
    from .regional_check import CAPE_CHARACTER, lora_file
    from .world import lora_prompt

    adapter = studio.load_lora(lora_file(CAPE_LORA), weight=1.0)
    try:
        return feature_rate(studio, lambda attrs: lora_prompt(CAPE_CHARACTER, CAPE_LORA), seeds=range(seeds),
                            steps=steps)
    finally:
        studio.unload_lora(adapter)


def load_draft_lora(studio: Studio, lora: Any = None, preset: str = "mini-lcm") -> str | None:
    """Load the 4-step LoRA (off) from ``lora`` (a file or folder), else the shipped one when it is
    there; its adapter name, or None when there is none (draft mode then uses the feature cache)."""
    from ..speed.presets import cached, get_preset, load_preset

    if lora is None and not cached(get_preset(preset)):
        return None
    return load_preset(studio, preset, lora, on=False)


def measure(studio: Studio, *, steps: int | None = None, preset: str | None = None, lora: Any = None,
            seeds: int = 10, cape_seeds: int = 10, scheduler: str | None = None) -> dict[str, Any]:
    """mini's behaviours at its default and drafted, side by side (see the module docstring)."""
    from ..speed.guard import compare

    # 1. The 4-step LoRA (when there is one): loaded off, so the default's recipes leave it out.
    adapter = load_draft_lora(studio, lora, preset or "mini-lcm")
    if adapter is not None and preset is None:
        preset = "mini-lcm"
    # 2. Both settings, each behaviour by evaluate's own function.
    default = behaviours(studio, seeds=seeds)
    with drafting(studio, preset, steps, scheduler):
        draft = behaviours(studio, seeds=seeds)
        method = studio.make_config("a girl").draft
    # 3. The draft sheet's identity next to the same sheet at full quality (same seed, same poses).
    guard = compare(studio, draft.pop("sheet_result"), default.pop("sheet_result"))
    # 4. The cape LoRA alone at 20 steps, and with the 4-step LoRA in the draft.
    if cape_seeds:
        default["cape"] = cape_rate(studio, cape_seeds)
        with drafting(studio, preset, steps, scheduler):
            draft["cape"] = cape_rate(studio, cape_seeds)
    p_default, p_draft = points(default), points(draft)
    within = {k: p_draft[k] >= p_default[k] - WITHIN_POINTS for k in p_default}
    return {"method": guard.method, "draft_record": {k: v for k, v in (method or {}).items() if k != "full"},
            "steps": {"default": DEFAULT_STEPS, "draft": steps}, "seeds": seeds, "default": _plain(default),
            "draft": _plain(draft), "points": {"default": p_default, "draft": p_draft}, "within_10_points": within,
            "identity": guard.to_dict(), "identity_table": guard.table()}


def _plain(figures: dict[str, Any]) -> dict[str, Any]:
    """The figures without pictures (JSON-ready)."""
    out = dict(figures)
    if "cape" in out:
        out["cape"] = {"rate": out["cape"]["rate"], "shown": [bool(s) for s in out["cape"]["shown"]]}
    return out


def format_report(report: dict[str, Any]) -> str:
    """The side-by-side table of `measure`'s figures, in points, with the 10-point verdicts."""
    p = report["points"]
    lines = [f"draft: {report['method']}", f"{'behaviour':<24}{'default (20 steps)':>20}{'draft':>10}  within 10 points"]
    for key in p["default"]:
        ok = report["within_10_points"][key]
        lines.append(f"{key:<24}{p['default'][key]:>20.1f}{p['draft'][key]:>10.1f}  {'yes' if ok else 'NO'}")
    lines.append(report["identity_table"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """python -m charstudio.mini.draft_check measure [--steps N] [--lora FILE] [--preset NAME] [--scheduler NAME]
    [--seeds N] [--json FILE]"""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m charstudio.mini.draft_check", description=main.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="print mini's behaviours at its default and in draft mode, side by side")
    m.add_argument("--steps", type=int, default=None, help="the draft's steps (default: the preset's, 4 for mini-lcm)")
    m.add_argument("--lora", default=None, help="the 4-step LoRA's file or folder (default: the shipped one)")
    m.add_argument("--preset", default=None, help="a few-step preset (default: draft mode's own choice)")
    m.add_argument("--scheduler", default=None, help="the draft's sampler instead of the preset's (e.g. tcd)")
    m.add_argument("--seeds", type=int, default=10, help="seeds per behaviour (default 10)")
    m.add_argument("--cape-seeds", type=int, default=10, help="seeds of the cape LoRA check (0: skip it)")
    m.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from ..studio import Studio

    studio = Studio.from_pretrained("mini", device="cpu")
    report = measure(studio, steps=args.steps, preset=args.preset, lora=args.lora, seeds=args.seeds,
                     cape_seeds=args.cape_seeds, scheduler=args.scheduler)
    print(format_report(report))
    if args.json:
        from ..io_utils import atomic_write

        text = json.dumps({k: v for k, v in report.items() if k != "identity_table"}, indent=1)
        atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
