"""The recipe package (charstudio.recipe) stands alone: it loads, checks and writes recipes
without torch, diffusers, the studio or the workflow runners; workflow fields reach their
schemas through one explicit registry; the runners do not import each other, and one
`run_recipe` owns the order "draw -> hires -> detail, or inpaint"."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from charstudio.errors import CardError, ConfigError

PACKAGE = Path(__file__).resolve().parent.parent / "charstudio"
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "peft")
ENGINE = ("charstudio.studio", "charstudio.workflows")


def test_a_recipe_is_built_checked_and_written_without_torch_diffusers_or_the_studio():
    # Every workflow field is filled, so each schema's check runs (and the inpaint source's own
    # recipe is read back), then the recipe goes through its PNG form and back.
    script = """
import json, sys
import charstudio.recipe as R
from charstudio.recipe.metadata import format_parameters, parse_parameters, png_info
source = R.GenerationConfig(prompt="a source", width=64, height=64, seed=3).to_dict()
recipe = R.GenerationConfig(prompt="two people", width=64, height=64, hires=1.5, detail=True,
                            regions=[{"prompt": "a girl", "box": "left"}, {"prompt": "a boy", "box": [32, 0, 64, 64]}])
inpaint = R.GenerationConfig(prompt="a hat", width=64, height=64,
                             inpaint={"source": {"recipe": source}, "mask": {"box": [8, 8, 40, 40]}})
png_info(recipe)
back = R.GenerationConfig(**parse_parameters(format_parameters(recipe)))
print(json.dumps({"hires": back.hires, "detail": recipe.detail["parts"], "inpaint": inpaint.inpaint["strength"],
                  "loaded": sorted(m for m in sys.modules)}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["hires"]["scale"] == 1.5 and found["detail"] == ["face", "hands"] and found["inpaint"] == 0.75
    loaded = found["loaded"]
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    engine = [m for m in loaded if m.startswith(ENGINE)]
    assert not heavy, f"charstudio.recipe imported {heavy[:5]}"
    assert not engine, f"charstudio.recipe imported {engine}"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a module, at any depth, except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in node.body for n in ast.walk(inner)}
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def test_no_recipe_module_imports_torch_the_studio_or_a_runner_even_inside_a_function():
    modules = sorted((PACKAGE / "recipe").glob("*.py"))
    assert {"config.py", "metadata.py", "hires.py", "detail.py", "inpaint.py", "regions.py"} <= {p.name for p in modules}
    bad = [f"{path.name}:{line} {name}" for path in modules
           for line, name in _imports(path) if name.split(".")[0] in HEAVY or name.startswith(ENGINE)]
    assert not bad, f"the recipe reaches for the engine: {bad}"


def test_the_runners_do_not_import_each_other():
    # hires <-> inpaint and inpaint <-> detail used to import each other; what they share is in
    # workflows.shared and workflows.masks, and run.run_recipe alone calls them in order.
    runners = ("hires", "detail", "inpaint", "regions")
    bad = [f"{r}.py:{line} {name}" for r in runners for line, name in _imports(PACKAGE / "workflows" / f"{r}.py")
           if any(name == f"charstudio.workflows.{o}" or name.startswith(f"charstudio.workflows.{o}.")
                  for o in runners if o != r)]
    assert not bad, f"runners importing runners: {bad}"


def test_workflow_fields_are_registered_explicitly_with_their_schemas_in_check_order():
    from dataclasses import fields

    from charstudio.recipe import GenerationConfig, detail, hires, inpaint, regions
    from charstudio.recipe.workflow_fields import WORKFLOW_FIELDS

    # inpaint's check reads the normalised hires, so the order is part of the contract.
    assert list(WORKFLOW_FIELDS) == ["regions", "hires", "detail", "inpaint"]
    assert WORKFLOW_FIELDS == {"regions": regions.check, "hires": hires.check, "detail": detail.check,
                               "inpaint": inpaint.check}
    assert set(WORKFLOW_FIELDS) <= {f.name for f in fields(GenerationConfig)}


def test_a_recipe_checks_its_workflow_fields_through_the_registry(monkeypatch):
    from charstudio.recipe import GenerationConfig
    from charstudio.recipe.workflow_fields import WORKFLOW_FIELDS

    seen = []

    def spy(value, config):
        seen.append((value, config.width))
        return {"scale": 2.0, "strength": 0.5, "steps": None, "upscaler": "pixel"}

    monkeypatch.setitem(WORKFLOW_FIELDS, "hires", spy)
    config = GenerationConfig(prompt="x", width=64, height=64, hires=3)
    assert seen == [(3, 64)]
    assert config.hires == {"scale": 2.0, "strength": 0.5, "steps": None, "upscaler": "pixel"}
    assert GenerationConfig(prompt="x", width=64, height=64).hires is None and len(seen) == 1  # off: not checked


def test_the_old_import_paths_are_the_recipe_package():
    import charstudio.config
    import charstudio.metadata
    import charstudio.recipe.config
    import charstudio.recipe.metadata
    from charstudio import GenerationConfig

    assert charstudio.config.GenerationConfig is charstudio.recipe.config.GenerationConfig is GenerationConfig
    assert charstudio.config.check_size is charstudio.recipe.config.check_size
    for name in ("format_parameters", "parse_parameters", "png_info", "read_recipe", "hires_fields"):
        assert getattr(charstudio.metadata, name) is getattr(charstudio.recipe.metadata, name)


# -- a region's card is refused under the region's own field ---------------------------------------
def test_a_missing_card_in_a_region_is_named_by_the_region():
    from charstudio.recipe import GenerationConfig

    regions = [{"prompt": "a girl", "box": "left"}, {"character": "no-such-card", "box": "right"}]
    with pytest.raises(ConfigError) as err:
        GenerationConfig(prompt="two people", width=64, height=64, regions=regions)
    assert err.value.field == "regions[1].character" and err.value.value == "no-such-card"
    assert "known cards" in err.value.expected
    regions[1]["character"] = "cards/missing.yaml"
    with pytest.raises(CardError, match=r"^regions\[1\]\.character='cards/missing.yaml': no such file"):
        GenerationConfig(prompt="two people", width=64, height=64, regions=regions)


# -- run_recipe owns the order ---------------------------------------------------------------------
class _Studio:
    """Records what the engine is asked to draw."""

    def __init__(self, calls):
        self.calls = calls

    def draw(self, config, **run_args):
        from charstudio.result import Result

        self.calls.append(("draw", sorted(run_args)))
        return Result(["drawn"], [config])


@pytest.fixture
def passes(monkeypatch):
    """The passes replaced by recorders: (calls, run_recipe)."""
    import charstudio.workflows.detail as detail
    import charstudio.workflows.hires as hires
    import charstudio.workflows.inpaint as inpaint
    from charstudio.result import Result
    from charstudio.workflows import run_recipe

    calls = []

    def after(name):
        def apply(studio, config, result, progress=None, cancel=None):
            calls.append((name, result.images, progress, cancel))
            return Result([f"{name}({result.images[0]})"], list(result.recipes))
        return apply

    def run_inpaint(studio, config, **run_args):
        calls.append(("inpaint", sorted(run_args)))
        return Result(["inpainted"], [config])

    monkeypatch.setattr(hires, "apply_hires", after("hires"))
    monkeypatch.setattr(detail, "apply_detail", after("detail"))
    monkeypatch.setattr(inpaint, "run_inpaint", run_inpaint)
    return calls, run_recipe


RUN_ARGS = dict(callbacks=(), progress="progress", cancel="cancel", control_image=None, latents=None,
                embeddings=None, init_image=None, strength=0.6)


def test_run_recipe_draws_then_the_hires_fix_then_the_detail_pass(passes):
    from charstudio.recipe import GenerationConfig

    calls, run_recipe = passes
    config = GenerationConfig(prompt="x", width=64, height=64, hires=1.5, detail=True,
                              watermark=False)  # the passes here draw names, not pictures to mark
    result = run_recipe(_Studio(calls), config, **RUN_ARGS)
    assert [c[0] for c in calls] == ["draw", "hires", "detail"]
    assert calls[0][1] == sorted(RUN_ARGS)  # Studio.run's arguments reach the engine
    assert calls[1][1:] == (["drawn"], "progress", "cancel") and calls[2][1] == ["hires(drawn)"]
    assert result.images == ["detail(hires(drawn))"]
    calls.clear()
    assert run_recipe(_Studio(calls), config.replace(hires=None, detail=None), **RUN_ARGS).images == ["drawn"]
    assert [c[0] for c in calls] == ["draw"]


def test_run_recipe_inpaints_instead_of_drawing_and_still_runs_the_detail_pass(passes):
    from charstudio.recipe import GenerationConfig

    calls, run_recipe = passes
    source = GenerationConfig(prompt="a source", width=64, height=64).to_dict()
    config = GenerationConfig(prompt="x", width=64, height=64, detail={"parts": ["face"]}, watermark=False,
                              inpaint={"source": {"recipe": source}, "mask": {"box": [0, 0, 32, 32]}})
    result = run_recipe(_Studio(calls), config, **RUN_ARGS)
    assert [c[0] for c in calls] == ["inpaint", "detail"]
    assert calls[0][1] == sorted(RUN_ARGS)
    assert result.images == ["detail(inpainted)"]
