"""The one interface every identity scorer follows, and the report a set of pictures gets.

A scorer turns pictures into embeddings and says how different two embeddings are, on its own
native scale (CCIP's difference, 1 - cosine for CLIP-I and mini's scorer), with the difference
below which two pictures show the same character. Users see one scale for all of them, the
*identity score* ``1 - difference`` (higher is more alike), and a threshold on that scale
(`Scorer.min_score`): a picture whose score against the anchor is below it counts as drifting.

Torch-free: embeddings are numpy arrays; each scorer imports its own runtime lazily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError


class Scorer:
    """Base class: subclasses set ``name`` and ``threshold`` and implement `embed`.

    ``threshold`` is on the native difference scale: two pictures whose difference is at or
    below it show the same character.
    """

    name: str = "scorer"
    threshold: float = 0.5

    def embed(self, images: Sequence[Any]) -> np.ndarray:
        """One row per picture (PIL images), float32."""
        raise NotImplementedError

    def difference(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pairwise differences between the rows of ``a`` (N, D) and ``b`` (M, D): an (N, M)
        array, 0 for identical embeddings. The default is 1 - cosine similarity."""
        a = _unit(np.asarray(a, dtype=np.float64))
        b = _unit(np.asarray(b, dtype=np.float64))
        return 1.0 - a @ b.T

    @property
    def min_score(self) -> float:
        """The same-character threshold on the identity-score scale (1 - difference)."""
        return 1.0 - float(self.threshold)

    def describe(self) -> str:
        """One line naming the scorer and its threshold, for logs, reports and the apps."""
        return f"{self.name} (same character at identity >= {self.min_score:.3f})"

    def report(self, images: Sequence[Any], anchor: int = 0, labels: Sequence[str] | None = None) -> IdentityReport:
        """Each picture's identity score against the picture at ``anchor`` and the pairwise matrix."""
        images = list(images)
        if not images:
            raise ConfigError("images", "0 image(s)", "at least one picture to score")
        if not 0 <= anchor < len(images):
            raise ConfigError("anchor", anchor, f"an index from 0 to {len(images) - 1}")
        emb = self.embed(images)
        return IdentityReport.from_difference(self, self.difference(emb, emb), anchor, labels)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


@dataclass
class IdentityReport:
    """Identity scores of a set of pictures: who scored them, against which anchor, with what
    threshold; ``scores[i]`` is picture i against the anchor, ``matrix[i][j]`` picture i against j
    (all on the identity-score scale, 1 - difference)."""

    scorer: str
    threshold: float
    anchor: int
    scores: list[float]
    matrix: list[list[float]]
    labels: list[str] = field(default_factory=list)

    @classmethod
    def from_difference(cls, scorer: Scorer, diff: np.ndarray, anchor: int = 0,
                        labels: Sequence[str] | None = None) -> IdentityReport:
        sim = 1.0 - np.asarray(diff, dtype=np.float64)
        return cls(scorer=scorer.name, threshold=round(scorer.min_score, 6), anchor=int(anchor),
                   scores=[round(float(v), 6) for v in sim[:, anchor]],
                   matrix=[[round(float(v), 6) for v in row] for row in sim],
                   labels=list(labels or []))

    @property
    def below(self) -> list[int]:
        """Indices of the pictures (not the anchor) whose score is below the threshold."""
        return [i for i, s in enumerate(self.scores) if i != self.anchor and s < self.threshold]

    @property
    def mean(self) -> float:
        """Mean score of the other pictures against the anchor (1.0 for a single picture)."""
        others = [s for i, s in enumerate(self.scores) if i != self.anchor]
        return float(np.mean(others)) if others else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"scorer": self.scorer, "threshold": self.threshold, "anchor": self.anchor, "scores": self.scores,
                "matrix": self.matrix, "labels": self.labels, "below": self.below}
