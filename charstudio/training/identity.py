"""Identity during LoRA training: how much the validation pictures look like the character in the
training pictures, at the trained weight and at weight 0 (the base model: the same prompt and
seeds with the adapter switched off). The change between the two is the LoRA's effect, the way
LoRA trainers report CCIP-I against the same prompt at weight 0.

Each validation point is one record in ``identity.json`` beside the LoRA (rewritten after every
validation, so a stopped run keeps what it measured) and on the step's `TrainingStep.identity`.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from .checkpoint import write_json

if TYPE_CHECKING:
    from ..identity import Scorer

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
OFF = "off"


class IdentityTracker:
    """Scores pictures against the training pictures with one identity scorer.

    A picture's score is its mean identity score (1 - difference) against every training picture;
    a validation point's score is the mean over its pictures."""

    def __init__(self, scorer: Scorer, training_images: Sequence[Any], out: Path, resumed: bool = False):
        self.scorer = scorer
        self.reference = scorer.embed(list(training_images))
        self.file = out / IDENTITY_FILE
        self.base: float | None = None
        self.points: list[dict[str, Any]] = _earlier_points(self.file) if resumed else []
        if self.points:
            self.base = self.points[-1].get("base")

    def score(self, images: Sequence[Any]) -> float:
        """Mean identity score of ``images`` against the training pictures."""
        emb = self.scorer.embed(list(images))
        return float(np.mean(1.0 - self.scorer.difference(emb, self.reference)))

    def record(self, step: int, images: Sequence[Any]) -> dict[str, Any] | None:
        """Score one validation point and rewrite ``identity.json``; None without pictures."""
        if not images:
            return None
        trained = self.score(images)
        point = {"step": int(step), "trained": round(trained, 6),
                 "base": None if self.base is None else round(self.base, 6),
                 "change": None if self.base is None else round(trained - self.base, 6)}
        self.points = [p for p in self.points if p["step"] != step] + [point]
        write_json(self.file, self.summary())
        log.info("identity at step %d: %.3f with the LoRA, %s at weight 0 (%s)", step, trained,
                 "n/a" if self.base is None else f"{self.base:.3f}", self.scorer.name)
        return {**point, "scorer": self.scorer.name, "threshold": round(self.scorer.min_score, 6)}

    def summary(self) -> dict[str, Any]:
        return {"scorer": self.scorer.name, "threshold": round(self.scorer.min_score, 6),
                "measure": "mean identity score (1 - difference) of the validation pictures against every "
                           "training picture; base = the same prompt and seeds at LoRA weight 0",
                "training_pictures": int(len(self.reference)), "points": self.points}


def _earlier_points(file: Path) -> list[dict[str, Any]]:
    """The points a stopped run measured (a resumed run goes on from them)."""
    import json

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        points = data.get("points") if isinstance(data, dict) else None
        return [p for p in points or [] if isinstance(p, dict) and isinstance(p.get("step"), int)]
    except (OSError, ValueError):
        return []


def make_tracker(setting: str | None, image_paths: Sequence[Path], out: Path, model: str,
                 resumed: bool = False) -> IdentityTracker | None:
    """The tracker for ``LoraTrainingConfig.identity_scorer`` ("off": none). A scorer that cannot
    be had (e.g. "ccip" without its files) is a clear error before training starts; the automatic
    choice always finds one (mini's scorer ships with the package)."""
    if setting == OFF:
        return None
    from PIL import Image

    from ..identity import get_scorer

    scorer = get_scorer(None if setting in (None, "auto") else setting, model=model)
    images = []
    for path in image_paths:
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    return IdentityTracker(scorer, images, out, resumed=resumed)


@contextmanager
def adapters_off(models: dict[str, Any]) -> Iterator[None]:
    """The models with their LoRA adapters switched off (weight 0), switched back on after."""
    switched = [m for m in models.values() if hasattr(m, "disable_adapters") and hasattr(m, "enable_adapters")]
    for m in switched:
        m.disable_adapters()
    try:
        yield
    finally:
        for m in switched:
            m.enable_adapters()
