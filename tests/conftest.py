"""Shared fixtures. Every test runs offline on models built in code."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_studio():
    """One tiny Studio for the whole session (fp32 on CPU). Tests must not leave adapters or
    processors installed on it; tests that change the model build their own."""
    from charstudio import Studio

    return Studio.from_pretrained("tiny", device="cpu")


@pytest.fixture
def fresh_studio():
    """A tiny Studio of the test's own, for tests that modify the model."""
    from charstudio import Studio

    return Studio.from_pretrained("tiny", device="cpu")


def pixels(image):
    import numpy as np

    return np.asarray(image.convert("RGB"), dtype=np.int16)
