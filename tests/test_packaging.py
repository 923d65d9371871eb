"""Packaging: lazy import, environment.yml agrees with pyproject, loading a saved folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
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
    from helpers import pixels

    tiny_studio.pipeline("txt2img").save_pretrained(tmp_path / "tiny-folder")
    studio = Studio.from_pretrained(str(tmp_path / "tiny-folder"), device="cpu")
    # (the watermark off: it hashes the recipe, whose model names the folder here)
    a = tiny_studio.generate("a cat", seed=2, num_inference_steps=3, watermark=False)
    b = studio.generate("a cat", seed=2, num_inference_steps=3, watermark=False)
    assert np.array_equal(pixels(a.image), pixels(b.image))
    assert b.recipe.model == str(tmp_path / "tiny-folder")


def test_gitignore_keeps_weights_out():
    text = (ROOT / ".gitignore").read_text()
    assert "lora/**/*.safetensors" in text and "outputs/" in text
    # notebook 02's demo dataset folder
    assert "datasets/" in text.splitlines()


def test_the_package_list_names_every_package_folder():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "charstudio").rglob("__init__.py")}
    assert found | {"charstudio.prompts"} == listed


def test_a_built_wheel_holds_the_cards_styles_poses_and_mini_and_works_installed(tmp_path):
    """A non-editable install: build the wheel, install it with --no-deps into a folder, use it."""
    import shutil
    import zipfile

    # From a clean copy: setuptools reuses a checkout's build/ folder, which can hide a missing file.
    src = tmp_path / "src"
    for part in ("charstudio", "prompts"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, src / part)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("charstudio-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    cards = {p.name for p in (ROOT / "prompts" / "characters").glob("*.yaml")}
    assert {f"charstudio/prompts/characters/{c}" for c in cards} <= names
    assert "charstudio/prompts/styles.yaml" in names
    assert {f"charstudio/data/poses/{p.name}" for p in (ROOT / "charstudio" / "data" / "poses").glob("*.json")} <= names
    for part in ("unet", "vae", "text_encoder", "controlnet"):
        assert any(n.startswith(f"charstudio/data/mini/{part}/") and n.endswith(".safetensors") for n in names), part
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    # -S: no site hooks, so the editable install of this checkout cannot shadow the wheel; the
    # venv's packages come after the wheel's folder. Run from elsewhere: no ./prompts to fall back on.
    import sysconfig

    code = ("import charstudio, charstudio.character as c, charstudio.pose as p; print(charstudio.__file__); "
            "print(','.join(c.list_characters())); print(','.join(sorted(c.load_styles()))); "
            "print(len(p.list_poses()))")
    env = {"PYTHONPATH": os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]]), "PATH": os.environ["PATH"]}
    run = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    where, listed_cards, styles, poses = run.stdout.split("\n")[:4]
    assert where.startswith(str(site))
    assert set(listed_cards.split(",")) == {c.removesuffix(".yaml") for c in cards}
    assert styles and int(poses) >= 8


def test_no_module_imports_another_modules_private_names():
    """`from .x import _name` couples one module to another's internals; use public names."""
    import ast

    offenders = []
    for path in sorted((ROOT / "charstudio").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("charstudio")):
                offenders += [f"{path.relative_to(ROOT)}: {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders, offenders


def test_torch_floor_makes_torch_load_safe_by_default():
    """controlnet-aux calls torch.load without weights_only: safe only from torch 2.6 on."""
    import inspect

    import torch

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (floor,) = [r for r in project["dependencies"] if _name(r) == "torch"]
    assert tuple(int(x) for x in re.search(r">=\s*([\d.]+)", floor).group(1).split(".")[:2]) >= (2, 6)
    assert inspect.signature(torch.load).parameters["weights_only"].default in (None, True)
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    import io

    buf = io.BytesIO()
    torch.save({"x": Payload()}, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(buf)  # as controlnet-aux calls it: no weights_only
