"""Guards for the package's shape (docs/CONTRACT.md): no import cycle, counting function-local
imports; family decisions only in models/family.py; no private Studio member used outside
charstudio/studio/; no module over the size limit. Each test names what it found."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "charstudio"
MAX_MODULE_LINES = 500
MAX_FACADE_LINES = 300


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of import nodes inside `if TYPE_CHECKING:` blocks (never executed)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                for sub in ast.walk(inner):
                    skip.add(id(sub))
    return skip


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports when it (or any of its functions) runs.

    Counts imports at any depth (function-local ones too), but not those under TYPE_CHECKING.
    Importing a.b.c also runs the packages a and a.b, except the importer's own ancestors
    (already being imported when it runs)."""
    mods = modules()

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_only(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                wanted = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = package.split(".")
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                wanted = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for w in wanted:
                target = known(w)
                if target is None:
                    continue
                for t in [*_ancestors(target), target]:
                    if t != name and t not in _ancestors(name) and t in mods:
                        targets.add(t)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle_counting_local_imports():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_a_cycle_through_a_function_local_import(tmp_path, monkeypatch):
    # The guard itself must be able to fail: a package whose cycle hides in a function body.
    pkg = tmp_path / "charstudio"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    from .a import f\n    return f\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    graph = import_graph()
    assert "charstudio.a" not in graph["charstudio.c"]  # TYPE_CHECKING imports do not count
    assert find_cycle(graph) == ["charstudio.a", "charstudio.b", "charstudio.a"]


def test_no_module_is_over_the_size_limit():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_the_studio_facade_is_small():
    lines = len((PACKAGE / "studio" / "__init__.py").read_text(encoding="utf-8").splitlines())
    assert lines < MAX_FACADE_LINES, f"charstudio/studio/__init__.py has {lines} lines (limit {MAX_FACADE_LINES})"


# -- private members ----------------------------------------------------------------------------
def private_studio_uses(root: Path = PACKAGE) -> list[str]:
    """`studio._x` (or `self.studio._x`, `app.studio._x`) anywhere outside charstudio/studio/."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if (root / "studio") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
                if name == "studio" or name.endswith("_studio"):
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_private_studio_member_is_used_outside_the_studio_package():
    assert private_studio_uses() == []


def test_the_private_member_guard_finds_one(tmp_path):
    (tmp_path / "studio").mkdir()
    (tmp_path / "studio" / "inside.py").write_text("def f(studio):\n    return studio._loras\n")
    (tmp_path / "feature.py").write_text("def f(self):\n    return self.studio._run(1)\n")
    assert private_studio_uses(tmp_path) == [f"{tmp_path.name}/feature.py:2: self.studio._run"]


# -- family decisions ---------------------------------------------------------------------------
FAMILY_NAMES = {"SD1", "SDXL"}  # the ModelFamily objects in models/family.py
FAMILY_WORDS = {"sdxl", "sd1", "sd15", "sd 1.x", "sd 2.x", "text_time", "text_encoder_2", "clip_g", "clip_l"}
FAMILY_WIDTHS = {768, 1024, 1280, 2048}  # cross-attention / text-encoder widths that tell families apart


def family_decisions(root: Path = PACKAGE) -> list[str]:
    """Places outside models/family.py that decide the family themselves: a test or a choice on a
    family signal (the family objects, the words that mark SDXL, the widths that tell the families
    apart), or a table keyed by those widths. Other uses (passing `family` around, asking it) are fine."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "models" / "family.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.If, ast.IfExp, ast.While)):
                tests = [node.test]
            elif isinstance(node, ast.Compare):
                tests = [node]
            elif isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                if len(keys & FAMILY_WIDTHS) >= 2:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno}: width table {ast.unparse(node)[:60]}")
                continue
            else:
                continue
            for test in tests:
                if _mentions_family_signal(test) or (isinstance(node, ast.IfExp) and _mentions_family_signal(node)):
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno}: {ast.unparse(test)[:80]}")
                    break
    return sorted(set(found))


def _mentions_family_signal(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in FAMILY_NAMES:
            return True
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value.lower() in FAMILY_WORDS:
            return True
        if isinstance(sub, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in FAMILY_WIDTHS
                                                and not isinstance(c.value, bool) for c in [sub.left, *sub.comparators]):
            return True
    return False


def test_no_family_decision_outside_the_family_module():
    assert family_decisions() == []


def test_the_family_guard_finds_each_pattern(tmp_path):
    (tmp_path / "a.py").write_text(
        "def f(unet, emb, sd):\n"
        "    x = SDXL if unet.config.addition_embed_type == 'text_time' else SD1\n"
        "    if emb.layout == 'sdxl':\n        pass\n"
        "    names = {768: 'SD 1.x', 2048: 'SDXL'}\n"
        "    if unet.config.cross_attention_dim == 2048:\n        pass\n"
        "    return family.native_size\n")
    lines = sorted({int(line.split(":")[1]) for line in family_decisions(tmp_path)})
    assert lines == [2, 3, 5, 6]  # line 8 asks the family, which is not a decision


def untyped_studio_arguments(root: Path = PACKAGE) -> list[str]:
    """Parameters named `studio` annotated `Any` (features type it `Studio` under TYPE_CHECKING)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.arg) and node.arg == "studio" and node.annotation is not None \
                    and ast.unparse(node.annotation) in ("Any", "'Any'", "typing.Any"):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    return found


def test_features_type_the_studio_they_take():
    assert untyped_studio_arguments() == []


def test_the_studio_type_guard_finds_one(tmp_path):
    (tmp_path / "f.py").write_text("from typing import Any\n\ndef f(studio: Any, x: Any):\n    pass\n")
    assert untyped_studio_arguments(tmp_path) == [f"{tmp_path.name}/f.py:3"]
