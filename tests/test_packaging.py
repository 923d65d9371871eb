"""Packaging: lazy import, environment.yml agrees with pyproject, loading a saved folder."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_import_is_lazy():
    code = "import sys, charstudio; charstudio.__version__; print(any(m in sys.modules for m in ('torch','diffusers','transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    wanted |= {_name(r) for extra in ("notebooks", "dev") for r in project["optional-dependencies"][extra]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            listed |= {_name(r) for r in dep.get("pip", []) if not r.startswith("-e")}
        elif not dep.startswith(("python", "pip")):
            listed.add(_name(dep))
    assert wanted == listed, f"only in pyproject: {wanted - listed}; only in environment.yml: {listed - wanted}"


def test_diffusers_folder_loads_through_the_same_path(tiny_studio, tmp_path):
    from charstudio import Studio
    from conftest import pixels

    tiny_studio.pipeline("txt2img").save_pretrained(tmp_path / "tiny-folder")
    studio = Studio.from_pretrained(str(tmp_path / "tiny-folder"), device="cpu")
    a = tiny_studio.generate("a cat", seed=2, num_inference_steps=3)
    b = studio.generate("a cat", seed=2, num_inference_steps=3)
    assert np.array_equal(pixels(a.image), pixels(b.image))
    assert b.recipe.model == str(tmp_path / "tiny-folder")


def test_gitignore_keeps_weights_out():
    text = (ROOT / ".gitignore").read_text()
    assert "lora/**/*.safetensors" in text and "outputs/" in text
