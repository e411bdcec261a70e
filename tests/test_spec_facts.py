"""The specification's facts have one source per language: ``sapiens2_edge/spec.py`` for Python and
``cpp/include/s2e/spec.hpp`` for C++, and the two hold the same values."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from sapiens2_edge import spec
from sapiens2_edge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sapiens2_edge"
CPP = ROOT / "cpp"
SPEC_HPP = CPP / "include" / "s2e" / "spec.hpp"


def _hpp() -> str:
    return re.sub(r"//[^\n]*", "", SPEC_HPP.read_text())  # comments may quote anything


def _cpp_int(src: str, name: str) -> int:
    """Value of ``constexpr int64_t name = <expr>;`` where expr adds literals and earlier constants."""
    m = re.search(rf"constexpr\s+int64_t\s+{name}\s*=\s*([^;]+);", src)
    assert m, f"{name} is not defined in {SPEC_HPP}"
    total = 0
    for term in m.group(1).split("+"):
        term = term.strip()
        total += int(term) if term.isdigit() else _cpp_int(src, term)
    return total


def _cpp_tasks(src: str) -> dict[str, tuple[str, ...]]:
    m = re.search(r"kTaskSpecs\[\]\s*=\s*\{(.*?)\n\};", src, re.S)
    assert m, f"kTaskSpecs is not defined in {SPEC_HPP}"
    out = {}
    for name, count, outputs in re.findall(r'\{"(\w+)",\s*(\d+),\s*\{([^}]*)\}\}', m.group(1)):
        names = tuple(re.findall(r'"(\w+)"', outputs))
        assert len(names) == int(count), f"{name}: num_outputs {count} but {len(names)} names"
        out[name] = names
    return out


def test_cpp_constants_equal_spec_py():
    src = _hpp()
    assert _cpp_int(src, "kPatch") == spec.PATCH_SIZE
    assert _cpp_int(src, "kStorageTokens") == spec.NUM_STORAGE_TOKENS
    assert _cpp_int(src, "kPrefixTokens") == spec.NUM_PREFIX_TOKENS == 9
    assert _cpp_int(src, "kWindow") == spec.WINDOW_SIZE


def test_cpp_tasks_and_output_names_equal_spec_py():
    src = _hpp()
    tasks = _cpp_tasks(src)
    assert tuple(tasks) == spec.TASKS
    assert tasks == spec.OUTPUT_NAMES
    m = re.search(r'kPretrainOutput\s*=\s*"(\w+)"', src)
    assert m and (m.group(1),) == spec.PRETRAIN_OUTPUT_NAMES


def _cpp_sources() -> list[Path]:
    return [p for p in sorted(CPP.rglob("*")) if p.suffix in (".cpp", ".hpp", ".h") and p != SPEC_HPP]


@pytest.mark.parametrize("name", ["kPatch", "kStorageTokens", "kPrefixTokens", "kWindow"])
def test_cpp_defines_each_constant_once(name):
    pattern = re.compile(rf"(#define\s+{name}\b|\b{name}\s*=(?!=))")
    again = [p.relative_to(ROOT) for p in _cpp_sources() if pattern.search(p.read_text())]
    assert not again, f"{name} is defined outside spec.hpp, in {again}"


def test_cpp_has_one_table_of_tasks_and_output_names():
    """Output-name and task-list literals live in spec.hpp only (messages may still name them)."""
    tables = [re.compile(r'\{\s*"heatmaps"\s*\}'), re.compile(r'"pointmap"\s*,\s*"scale"'),
              re.compile(r'"pose"\s*,\s*"seg"'), re.compile(r'return\s*\{?\s*"featmap"')]
    again = [(str(p.relative_to(ROOT)), t.pattern) for p in _cpp_sources() for t in tables
             if t.search(p.read_text())]
    assert not again, f"task / output tables outside spec.hpp: {again}"


# --- Python: nothing redefines a fact --------------------------------------------------------------
# Tuples that are facts wherever they appear, and numbers that are facts under their name.
_FACT_VALUES = [spec.TASKS, spec.RELEASED_TASKS, spec.DEFAULT_INPUT_SIZE, spec.DEFAULT_INPUT_SIZE[::-1],
                spec.PRETRAIN_OUTPUT_NAMES, *(v for v in spec.OUTPUT_NAMES.values() if len(v) > 1)]
_NAMED_FACTS = {"prefix_tokens": spec.NUM_PREFIX_TOKENS, "patch_size": spec.PATCH_SIZE,
                "storage_tokens": spec.NUM_STORAGE_TOKENS, "window_size": spec.WINDOW_SIZE}

# Output names that are no task's name (a task-named output such as "normal" is told by context only).
_OUTPUT_LITERALS = {n for names in spec.OUTPUT_NAMES.values() for n in names if n not in spec.TASKS} | set(
    spec.PRETRAIN_OUTPUT_NAMES)


def _is_fact(name: str, value) -> bool:
    if value in _FACT_VALUES:
        return True
    return any(name.lower().endswith(key) and value == fact for key, fact in _NAMED_FACTS.items())


def _literal(node: ast.AST):
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return tuple(value) if isinstance(value, list) else value


def _redefinitions(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Tuple, ast.List)):  # an output-name table, wherever it is written
            names = [e.value for e in node.elts if isinstance(e, ast.Constant)]
            if any(n in _OUTPUT_LITERALS for n in names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} output names {names!r}")
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id if isinstance(t, ast.Name) else getattr(t, "attr", "") for t in targets]
            value = _literal(node.value)
            if value is None:
                continue
            if any(_is_fact(n, value) for n in names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {names} = {value!r}")
        elif isinstance(node, ast.arguments):
            args = node.posonlyargs + node.args
            pairs = list(zip(args[len(args) - len(node.defaults):], node.defaults, strict=True)) + [
                (a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True) if d is not None]
            for arg, default in pairs:
                value = _literal(default)
                if value is not None and _is_fact(arg.arg, value):
                    found.append(f"{path.relative_to(ROOT)}:{default.lineno} default {arg.arg}={value!r}")
    return found


def test_python_package_defines_each_fact_once():
    found = [r for p in sorted(PACKAGE.rglob("*.py")) if p.name != "spec.py" for r in _redefinitions(p)]
    assert not found, "facts of sapiens2_edge/spec.py defined again:\n" + "\n".join(found)


def test_unknown_task_is_a_config_error():
    assert spec.check_task("seg") == "seg"
    assert spec.output_names(None) == ("featmap",) and spec.output_names("pointmap") == ("pointmap", "scale")
    with pytest.raises(ConfigError, match="unknown task 'depth'; expected one of pose, seg, normal, pointmap, albedo"):
        spec.output_names("depth")
    with pytest.raises(ConfigError, match="unknown task 3"):
        spec.check_task(3)
