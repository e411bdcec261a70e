"""The package's architecture, checked: every ``sapiens2_edge`` import (module level and inside
functions) goes down the layer order, and no modules import each other, directly or in a ring.

Layers, lowest first (see the README's layout section): errors/spec; tasks and artifact (no torch);
kernels < models < quantization < exporters; runtime sits on tasks + artifact, with the torch
backend as the one bridge to the torch side; the top (public face, CLI, demo, bench) may use all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sapiens2_edge"

BOTTOM = {"errors", "spec", "cpu_features", "heap", "_version", "_native"}
TORCH_SIDE = BOTTOM | {"tasks", "artifact", "kernels", "models", "quantization", "runtime", "loading", "exporters",
                       "detection"}
# layer -> the layers it may import (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "spec": {"errors"},
    "cpu_features": set(),
    "heap": set(),
    "_version": set(),
    "_native": set(),
    "tasks": BOTTOM,
    "artifact": BOTTOM,
    "kernels": BOTTOM,
    "models": BOTTOM | {"tasks", "kernels"},
    "quantization": BOTTOM | {"tasks", "kernels", "models"},
    # the person detector (RTMDet-m): its own network, checkpoint conversion and pre/post-processing
    "detection": BOTTOM | {"tasks", "kernels", "models"},
    "runtime": BOTTOM | {"tasks", "artifact"},
    # the torch backend loads checkpoints (float or quantized) and the person detector for the Predictor
    "runtime.torch_backend": BOTTOM | {"tasks", "artifact", "runtime", "models", "quantization", "loading",
                                       "detection"},
    "loading": BOTTOM | {"tasks", "kernels", "models", "quantization"},
    # exporters also export the person detector (detection.export wraps it for them)
    "exporters": BOTTOM | {"tasks", "artifact", "kernels", "models", "quantization", "runtime", "loading", "detection"},
    # the top: library workflows that chain several steps, the bench table, the main job, the CLI
    "workflows": TORCH_SIDE | {""},  # "": the public face (load_model, export, ...)
    "bench": TORCH_SIDE | {"", "workflows"},
    "demo": TORCH_SIDE | {"", "workflows", "bench"},
    # scale-out batch inference (Ray Data): the runtime's Predictor per worker
    "scale": TORCH_SIDE,
    "cli": TORCH_SIDE | {"", "workflows", "bench", "demo", "scale"},
    "": BOTTOM,  # the package root exposes everything else lazily through importlib
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split(".")) if name else Path()
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists() \
        or any(PACKAGE.glob(f"{rel}.*.so"))


def imports_of(path: Path) -> set[str]:
    """The ``sapiens2_edge`` modules ``path`` imports (names relative to the package, "" = root)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "sapiens2_edge" or alias.name.startswith("sapiens2_edge."):
                    found.add(alias.name.removeprefix("sapiens2_edge").lstrip("."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module == "sapiens2_edge" or (node.module or "").startswith("sapiens2_edge."):
                target = node.module.removeprefix("sapiens2_edge").lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if is_module(sub) else target)
    found.discard(this)
    return found


def layer_of(name: str) -> str:
    if name in ALLOWED:
        return name
    top = name.split(".")[0]
    if top in ALLOWED:
        return top
    raise AssertionError(f"module sapiens2_edge.{name} belongs to no layer: add its package to ALLOWED "
                         "in tests/test_layers.py and to the README's layout section")


GRAPH = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
    for name in GRAPH:
        layer_of(name)


def test_imports_go_down_the_layers():
    wrong = []
    for name, targets in GRAPH.items():
        layer = layer_of(name)
        for target in targets:
            if target == "" and "" not in ALLOWED[layer]:
                wrong.append(f"{name} imports the package root (take the name from its own module)")
                continue
            if target == "":
                continue
            other = layer_of(target)
            same_package = target.split(".")[0] == name.split(".")[0]
            if not same_package and other not in ALLOWED[layer] and layer_of(target.split(".")[0]) not in ALLOWED[layer]:
                wrong.append(f"{name} ({layer}) imports {target} ({other})")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(sorted(wrong))


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively; components of more than one module are import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    rings = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next((c for c in children if c in graph), None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                ring = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    ring.append(top)
                    if top == node:
                        break
                if len(ring) > 1:
                    rings.append(sorted(ring))
    return rings


def test_no_import_circles():
    rings = strongly_connected(GRAPH)
    assert not rings, "import circles:\n" + "\n".join(" <-> ".join(r) for r in rings)


def test_the_cycle_finder_finds_rings():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_the_import_walker_sees_function_level_imports(tmp_path):
    source = PACKAGE / "runtime" / "predictor.py"
    assert "tasks" in {t.split(".")[0] for t in imports_of(source)}


@pytest.mark.parametrize("limit", [500])
def test_modules_stay_small(limit):
    big = {module_name(p): n for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text().splitlines())) >= limit}
    assert not big, f"modules of {limit} lines or more: {big}"
