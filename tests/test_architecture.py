"""The package's shape (#29), read from the source with ``ast`` (nothing is imported, so no
torch): no import cycle between fpncli's modules, counting imports inside functions; no
module over 500 lines; and the lower layers never importing the services or the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fpncli"
MAX_LINES = 500
SERVICES = ("cli", "inference", "evaluation", "training", "analysis", "deploy", "workflows")


def _modules() -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of fpncli (a package by its ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``: never run, so they make no cycle."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def _owner(name: str) -> str | None:
    """The fpncli module that ``name`` (a module, or a name inside one) resolves to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """The fpncli modules that ``module`` imports anywhere (module level or inside functions),
    absolute or relative; ``from package import submodule`` counts as the submodule."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped = _type_checking_only(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            owner = _owner(target) if target.split(".")[0] == "fpncli" else None
            if owner is not None and owner != module:
                found.add(owner)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _cycle() -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or None (depth-first search, iterative)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(GRAPH):
        if start in state:
            continue
        path = [start]
        stack = [iter(sorted(GRAPH[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(GRAPH[nxt])))
    return None


def test_the_scan_sees_imports_inside_functions():
    # Guards the scan itself: these edges exist only as function-level imports.
    assert "fpncli.data.images" in GRAPH["fpncli.modeling.detector"]
    assert "fpncli.modeling.weights" in GRAPH["fpncli.analysis.inspect_levels"]
    assert len(GRAPH) > 50


def test_no_import_cycle():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_over_500_lines():
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in MODULES.values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: " + ", ".join(
        f"{p} ({n})" for p, n in sorted(long.items())
    )


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("data", (*SERVICES, "modeling", "viz")),
        ("modeling", SERVICES),
        ("viz", SERVICES),
    ],
)
def test_lower_layers_never_import_upward(layer, forbidden):
    prefix = f"fpncli.{layer}"
    banned = tuple(f"fpncli.{name}" for name in forbidden)
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if module == prefix or module.startswith(prefix + ".")
        for target in targets
        if any(target == b or target.startswith(b + ".") for b in banned)
    )
    assert not wrong, f"{layer}/ imports from a layer above it: " + "; ".join(wrong)
