"""PNGs written by an earlier main (commit 69ed6cd, before the second house pass) re-run
bit-identically: recipe field names and their meaning do not change under refactoring.

The fixtures were made by `tests/fixtures/recipes_main_69ed6cd/make_fixtures.py` run against
that commit; they cover txt2img, a pose with a Karras scheduler and prompt editing, the hires
fix, regional prompts, a style mix, SDXL with and without a pose, and mini with the detail pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from charstudio import Studio
from charstudio.result import Result

FIXTURES = Path(__file__).parent / "fixtures" / "recipes_main_69ed6cd"
_MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
MANIFEST, MADE_WITH = _MANIFEST["pictures"], _MANIFEST["made_with"]
_studios: dict[str, Studio] = {}


def studio_for(model: str) -> Studio:
    if model not in _studios:
        _studios[model] = Studio.from_pretrained(model, device="cpu")
    return _studios[model]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_old_png_reruns_bit_identically(name, one_thread):
    import torch

    # Bit-identity holds for the same CPU kernels: the fixtures were drawn on one thread with
    # MADE_WITH's CPU capability. Another instruction set (an ARM laptop, AVX2) may round a
    # reduction differently; there the pictures must still agree within 1 level of 255.
    same_kernels = torch.backends.cpu.get_cpu_capability() == MADE_WITH["cpu_capability"]
    old = Result.from_png(FIXTURES / MANIFEST[name])
    assert old.recipe.model in ("tiny", "tiny-sdxl", "mini")
    again = studio_for(old.recipe.model).run(old.recipe)
    a, b = np.asarray(old.image.convert("RGB")), np.asarray(again.image.convert("RGB"))
    assert a.shape == b.shape
    worst = int(np.abs(a.astype(int) - b.astype(int)).max())
    assert worst <= (0 if same_kernels else 1), f"{name}: max difference {worst} of 255"
    # the re-run's recipe is the same recipe (no field renamed, dropped or re-defaulted)
    assert again.recipe.to_dict() == old.recipe.to_dict()
