"""The command line is a thin layer: every command is listed, and no module of the package imports it."""

from __future__ import annotations

import ast
from pathlib import Path

from typer.testing import CliRunner

from sapiens2_edge.cli import app

PACKAGE = Path(__file__).resolve().parents[1] / "sapiens2_edge"
COMMANDS = ("info", "init-random", "convert", "predict", "quantize", "export", "verify", "bench", "demo")


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the sapiens2_edge modules ``path`` imports, at module level or in functions."""
    package = ".".join(("sapiens2_edge", *path.relative_to(PACKAGE).parent.parts))
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("sapiens2_edge")}


def test_every_command_is_in_help():
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0, res.output
    for command in COMMANDS:
        assert f" {command} " in res.output, command
    assert {c.name or c.callback.__name__ for c in app.registered_commands} == set(COMMANDS)


def test_nothing_imports_the_cli():
    importers = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if "cli" not in p.relative_to(PACKAGE).parts[:1] and "sapiens2_edge.cli" in _imported_modules(p)]
    assert not importers


def test_prediction_outputs_live_in_the_torch_free_runtime():
    for name in ("outputs.py", "inputs.py"):
        imported = _imported_modules(PACKAGE / "runtime" / name)
        assert all(m.startswith(("sapiens2_edge.errors", "sapiens2_edge.spec", "sapiens2_edge.tasks",
                                 "sapiens2_edge.runtime")) for m in imported), imported
