"""The package's layout (DESIGN.md): no import cycle among bertmath's modules, and no function-local import of a
bertmath module outside cli.py but the documented ones. Read from the source with ast, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bertmath"

# cli.py's function-local imports are all deliberate: each command loads only what it needs (`bertmath params`
# does not load `datasets`, `bertmath fill-mask` not matplotlib). Anywhere else a function-local import of
# bertmath is allowed only here, with its reason.
DOCUMENTED_LOCAL_IMPORTS = {
    # pretrained.py builds models, so it imports model.py; the model, which does no I/O, reaches the loader
    # only when a user calls from_pretrained: a one-way call back, left out of the cycle check.
    ("bertmath.model", "bertmath.pretrained"),
    # bertmath.train: `import bertmath` (and with it every CLI command) does not load the trainer's `datasets`.
    ("bertmath", "bertmath.trainer"),
}
LAZY_MODULES = {"bertmath.cli"}


def module_sources(package: Path = PACKAGE) -> dict[str, str]:
    """{dotted module name: source} of every .py file under `package` (a package's __init__ is its name)."""
    sources = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        sources[name] = path.read_text(encoding="utf-8")
    return sources


def imports(sources: dict[str, str]) -> list[tuple[str, str, bool, int]]:
    """(importer, imported module, whether the import is inside a function, line) for every import of one of
    `sources`' modules. `from . import x` names module x where x is one; a package's implicit import of its
    parent __init__ is not counted (every module would import bertmath/__init__.py)."""
    found = []
    for name, source in sources.items():
        tree = ast.parse(source)
        is_package = any(other.startswith(name + ".") for other in sources)
        functions = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
        local = {id(node) for function in functions for node in ast.walk(function)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # `from . import x` imports module x (its package only as every module's parent does)
                targets = ([module] if node.module else []) + [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                if target in sources and target != name:
                    found.append((name, target, id(node) in local, node.lineno))
    return found


def find_cycle(edges: set[tuple[str, str]]) -> list[str] | None:
    """One import cycle [a, b, ..., a] among `edges`, or None."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def undocumented_local_imports(found) -> list[str]:
    return [f"{a} line {line}: imports {b} inside a function" for a, b, local, line in found
            if local and a not in LAZY_MODULES and (a, b) not in DOCUMENTED_LOCAL_IMPORTS]


def test_the_package_has_no_import_cycle():
    found = imports(module_sources())
    assert len({b for _, b, _, _ in found}) > 15  # the walk sees the package (a broken walk finds nothing)
    edges = {(a, b) for a, b, _, _ in found if (a, b) not in DOCUMENTED_LOCAL_IMPORTS}
    assert find_cycle(edges) is None, " → ".join(find_cycle(edges))


def test_no_function_local_bertmath_import_outside_cli_but_the_documented_ones():
    found = imports(module_sources())
    assert not undocumented_local_imports(found)
    # each documented one still exists (else drop it from the list)
    assert {(a, b) for a, b, local, _ in found if local} >= DOCUMENTED_LOCAL_IMPORTS


def test_io_and_the_math_stand_on_nothing_above_them():
    """The floors of DESIGN.md: io.py imports nothing of bertmath but its errors; functional.py nothing at all;
    model.py, which does no I/O, only the math, the config and the masking; distributed.py no model."""
    found = imports(module_sources())
    top = {(a, b) for a, b, local, _ in found if not local}
    assert {b for a, b in top if a == "bertmath.io"} <= {"bertmath.errors"}
    assert not {b for a, b in top if a == "bertmath.functional"}
    # (masking: sparse MLM's prediction slots)
    assert {b for a, b in top if a == "bertmath.model"} <= {"bertmath.functional", "bertmath.config", "bertmath.masking"}
    assert "bertmath.model" not in {b for a, b, _, _ in found if a == "bertmath.distributed"}


def reachable(found, start: str) -> set[str]:
    """Every bertmath module that importing `start` loads (module-level imports, followed transitively)."""
    top: dict[str, set[str]] = {}
    for a, b, local, _ in found:
        if not local:
            top.setdefault(a, set()).add(b)
    seen, todo = set(), [start]
    while todo:
        for module in top.get(todo.pop(), ()):
            if module not in seen:
                seen.add(module)
                todo.append(module)
    return seen


def test_inference_and_scores_stand_on_no_training_code():
    """scores.py is pure math on tensors; `bertmath classify`, `bertmath fill-mask` and `bertmath tag` load no corpus code
    (data.py, which imports `datasets`) and no trainer; fine-tuning stands on the trainer, not the other way."""
    found = imports(module_sources())
    assert not reachable(found, "bertmath.tasks.scores")
    for inference in ("bertmath.tasks.classify", "bertmath.fill_mask", "bertmath.tasks.tagging"):
        assert "bertmath.pretrained" in reachable(found, inference)  # the walk follows imports
        assert not reachable(found, inference) & {"bertmath.data", "bertmath.trainer", "bertmath.tasks.finetune"}
    assert {"bertmath.trainer", "bertmath.tasks.classify", "bertmath.tasks.scores"} <= reachable(found, "bertmath.tasks.finetune")
    assert "bertmath.tasks.finetune" not in reachable(found, "bertmath.trainer")


@pytest.mark.parametrize("cyclic", [True, False])
def test_the_checks_see_a_cycle_and_a_local_import(tmp_path, cyclic):
    """The walk itself: a made-up package with a → b → c (→ a when `cyclic`) and a local import in c."""
    package = tmp_path / "bertmath"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "b.py").write_text("from ..c import thing\n")
    (package / "c.py").write_text(("from . import a\n" if cyclic else "") + "def f():\n    from .sub import x\n")
    found = imports(module_sources(package))
    edges = {(a, b) for a, b, _, _ in found}
    assert {("bertmath.a", "bertmath.sub"), ("bertmath.a", "bertmath.sub.b"), ("bertmath.sub.b", "bertmath.c")} <= edges
    assert find_cycle(edges) == (["bertmath.a", "bertmath.sub.b", "bertmath.c", "bertmath.a"] if cyclic else None)
    assert undocumented_local_imports(found) == [f"bertmath.c line {3 if cyclic else 2}: imports bertmath.sub "
                                                 "inside a function"]
