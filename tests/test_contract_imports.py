"""The package's import graph: no cycle anywhere (lazy imports inside functions count too), and data
flows one way through the layers, so no module reaches up or sideways into a later stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tunelab"

# Lower layers never import higher ones. Command-line modules sit on top of everything.
LAYERS = [
    {"errors", "paths", "settings", "events", "ranks", "rundir", "precision", "distributed"},
    {"models", "scoring", "graders"},  # graders judge with models and score with scoring
    {"data"},
    {"methods", "tasks"},
    {"config"},
    {"eval", "plan"},
    {"train", "inputs"},  # inputs resolves the config with train.budget's rules; eval's CLI is on top
    {"export"},
    {"experiments", "serve"},  # serve drives whole runs (tunelab run) and loads their models, as experiments does
    {"cli", "cli_output", "launch", "__main__"},
]
CLI_MODULES = {"tunelab.cli", "tunelab.cli_output", "tunelab.data.cli", "tunelab.eval.cli", "tunelab.export.cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every tunelab module this file imports, at the top or inside a function."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tunelab")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("tunelab"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def layer_of(module: str) -> int:
    if module in CLI_MODULES:
        return len(LAYERS) - 1
    top = module.split(".")[1] if "." in module else "__init__"
    return next((i for i, layer in enumerate(LAYERS) if top in layer), -1)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt == "tunelab":
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_every_module_has_a_layer():
    assert [m for m in graph() if layer_of(m) < 0 and m != "tunelab"] == []


def test_imports_flow_one_way():
    wrong = [f"{a} imports {b}" for a, targets in graph().items() for b in targets
             if b != "tunelab" and layer_of(b) > layer_of(a)]
    assert wrong == []


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["tunelab.eval.evidence", "tunelab.eval.report"])
def test_eval_does_not_import_train(module):
    assert not {m for m in graph()[module] if m.startswith("tunelab.train")}
