"""Helpers the test modules share (plain functions, not fixtures: fixtures live in conftest.py,
which is pytest's and is never imported by a test). Import them as ``from helpers import pixels``;
pytest puts this folder on sys.path (rootdir conftest, the default "prepend" import mode)."""

from __future__ import annotations

from typing import Any

import numpy as np


def pixels(image: Any) -> np.ndarray:
    """A picture's RGB pixels as int16, so differences of two pictures do not wrap around."""
    return np.asarray(image.convert("RGB"), dtype=np.int16)
