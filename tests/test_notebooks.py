"""Every notebook runs top to bottom on the built-in mini model (few steps), as CI does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# What each notebook's scripted part must print when it worked.
EXPECTED = {
    "01_explore_characters.ipynb": ["made 1 picture(s); seed 42"],
    "02_train_lora.ipynb": ["trained 4 steps", "'diffusers'"],
    "03_interpolate.ipynb": ["3 frames from 3 renders", "evenness", "3 frames from standing_front to jumping",
                             "'watercolor': 0.6"],
    "04_diffusion_process.ipynb": ["traced 6 steps", "step 2 of 6", "A: ddim x6  vs  B: euler-a x6"],
    "05_character_workflows.ipynb": ["Inpaint a body region: done", "inpainted: hair", "detail parts: ['face', 'hands']", "hires size: (96, 96)",
                                     "views: ['front', 'three-quarter', 'side', 'back']",
                                     "expressions: ['neutral', 'smiling', 'angry']", "regions: ['left', 'right']"],
    "06_storyboard.ipynb": ["3 panels drawn", "tries per panel:", "panel 1: rin", "panel 2 done", "panel 2 is now seed"],
}


def test_the_notebooks_exist_and_are_stored_without_outputs():
    assert [p.name for p in NOTEBOOKS] == sorted(EXPECTED)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert nb.cells[0].cell_type == "markdown" and 'MODEL = "mini"' in code[0].source
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
    # and they are what tools/make_notebooks.py writes
    check = subprocess.run([sys.executable, str(ROOT / "tools" / "make_notebooks.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def _text(outputs) -> str:
    parts = []
    for out in outputs:
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    # The kernel inherits this environment: few steps, offline, and scratch folders for its files.
    monkeypatch.setenv("CHARSTUDIO_FAST", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("CHARSTUDIO_LORA_DIR", str(tmp_path / "lora"))
    monkeypatch.setenv("CHARSTUDIO_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("CHARSTUDIO_POSE_DIR", str(tmp_path / "poses"))  # 01 saves an edited pose
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    printed = "\n".join(_text(c.outputs) for c in nb.cells if c.cell_type == "code")
    for expected in EXPECTED[path.name]:
        assert expected in printed, f"{path.name}: {expected!r} not in its output:\n{printed[-2000:]}"
    assert "failed" not in printed, printed[-2000:]
    # The cell that shows the app displays a widget, not an error.
    app_cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.rstrip().endswith("\napp"))
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in app_cell.outputs)
