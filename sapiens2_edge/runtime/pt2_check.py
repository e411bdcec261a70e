"""What a ``model.pt2`` may hold before ``torch.export.load`` sees it.

``torch.export.load`` unpickles with ``weights_only=False`` whatever the archive marks as pickled
(weights, constants, custom objects, a sample-inputs file that the safe loader refuses), loads
AOTInductor shared libraries it carries, evaluates the symbolic-shape strings of the graph with
``sympy.sympify`` (``eval``) and ``exec``s its guard code. An artifact is data, so an archive is
accepted only when it holds exactly what ``torch.export.save`` writes for our models: raw tensor
payloads, a graph of ``torch.ops`` calls, symbol expressions over shape symbols, no guard code.
Anything else is refused with an ArtifactError before torch reads it. Torch-free but for the
sample inputs, read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

from ..errors import ArtifactError

MODEL = "model"
_PAYLOAD = {"data/weights/": re.compile(r"weight_\d+"), "data/constants/": re.compile(r"tensor_\d+")}
_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id",
          f"models/{MODEL}.json", f"data/weights/{MODEL}_weights_config.json",
          f"data/constants/{MODEL}_constants_config.json", f"data/sample_inputs/{MODEL}.pt"}
# torch operators, the autocast region of a bf16 program (its arguments are a device name, a dtype, two
# flags and a subgraph of calls that is checked like the rest), and the arithmetic torch.export writes on
# symbolic sizes (a dynamic batch times the tokens per image): the operator-module functions its
# deserializer accepts for symbolic ints
_TARGET = re.compile(r"torch\.ops\.(aten|prims|sapiens2_edge)\.\w+\.\w+|torch\.ops\.higher_order\.wrap_with_autocast|"
                     r"_operator\.(getitem|eq|ne|le|ge|lt|gt|neg|pos|mul|add|sub|floordiv|mod|pow|truediv)")
# a symbolic shape expression: shape symbols, integers and sympy's arithmetic, nothing callable else
_SYMPY_NAMES = ("Symbol|Integer|Rational|Float|Add|Mul|Pow|Max|Min|Abs|Eq|Ne|Le|Lt|Ge|Gt|And|Or|Not|"
                "FloorDiv|ModularIndexing|Where|PythonMod|Mod|CleanDiv|CeilToInt|FloorToInt|CeilDiv|LShift|RShift|"
                "PowByNatural|FloatPow|FloatTrueDiv|IntTrueDiv|TruncToFloat|TruncToInt|RoundToInt|RoundDecimal|"
                "ToFloat|Identity|positive|negative|integer|nonnegative|real|finite|True|False|oo|zoo|nan")
_EXPR_TOKEN = re.compile(rf"\s*(?:(?:{_SYMPY_NAMES}|[su]\d+)\b|'[su]\d+'|\d+(?:\.\d+)?(?:e-?\d+)?|\*\*|//|"
                         r"[-+*/%(),=<>!])")
MAX_JSON = 256 << 20


def _refuse(path: Path, what: str):
    raise ArtifactError(f"{path} {what}; artifacts hold no pickled objects or code, so it is refused "
                        "(re-export the artifact with sapiens2-edge)")


def check_expr(text: Any) -> bool:
    if not isinstance(text, str) or len(text) > 4096:
        return False
    pos = 0
    while pos < len(text):
        m = _EXPR_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            return text[pos:].strip() == ""
        pos = m.end()
    return True


def _walk_graph(path: Path, node: Any) -> None:
    stack = [(node, None)]
    while stack:
        value, key = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                if k == "target" and isinstance(v, str):
                    if not _TARGET.fullmatch(v):
                        _refuse(path, f"calls {v[:100]!r}, which is not a torch operator")
                elif k == "expr_str":
                    if not check_expr(v):
                        _refuse(path, f"holds the shape expression {str(v)[:100]!r}, which is not arithmetic on "
                                      "shape symbols")
                elif k in ("as_custom_obj", "custom_obj_values") and v:
                    _refuse(path, "holds custom (pickled) objects")
                else:
                    stack.append((v, k))
        elif isinstance(value, list):
            stack.extend((v, key) for v in value)


def _payload_config(path: Path, z: zipfile.ZipFile, name: str, prefix: str) -> None:
    try:
        config = json.loads(z.read(name))["config"]
        entries = list(config.values())
    except (KeyError, ValueError, AttributeError, TypeError, RecursionError):
        _refuse(path, f"has an unreadable {name.split('/', 1)[1]}")
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
            _refuse(path, "marks a tensor as pickled (use_pickle)")
        if not isinstance(entry.get("path_name"), str) or not _PAYLOAD[prefix].fullmatch(entry["path_name"]):
            _refuse(path, f"names the payload {str(entry.get('path_name'))[:80]!r}, which is not a raw tensor")


def check_program_archive(path: str | Path) -> None:
    """Refuse ``path`` unless it is a plain ``torch.export.save`` archive (see the module notes)."""
    path = Path(path)
    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError, NotImplementedError) as e:
        # NotImplementedError: zipfile's word for a version it does not read
        raise ArtifactError(f"cannot load the torch.export program {path}: it is not a zip archive ({e})") from None
    with z:
        names = z.namelist()
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            _refuse(path, "is not laid out as one torch.export program")
        root = roots.pop() + "/"
        for name in names:
            rel = name[len(root):]
            if rel in _FIXED or rel.endswith("/") or any(
                    rel.startswith(p) and pat.fullmatch(rel[len(p):]) for p, pat in _PAYLOAD.items()):
                continue
            _refuse(path, f"holds {rel[:100]!r}, which a torch.export program of a model does not")
        for need in (f"models/{MODEL}.json", f"data/weights/{MODEL}_weights_config.json",
                     f"data/constants/{MODEL}_constants_config.json", f"data/sample_inputs/{MODEL}.pt"):
            if root + need not in names:
                _refuse(path, f"lacks {need}")
        try:
            for prefix, kind in (("data/weights/", "weights"), ("data/constants/", "constants")):
                _payload_config(path, z, f"{root}{prefix}{MODEL}_{kind}_config.json", prefix)
            info = z.getinfo(f"{root}models/{MODEL}.json")
            if info.file_size > MAX_JSON:
                _refuse(path, "holds a graph larger than a model's")
            try:
                program = json.loads(z.read(info))
            except (ValueError, RecursionError):
                _refuse(path, "holds an unreadable graph")
            if not isinstance(program, dict):
                _refuse(path, "holds an unreadable graph")
            if program.get("guards_code"):
                _refuse(path, "carries guard code, which torch runs with exec")
            if not all(check_expr(k) for k in (program.get("range_constraints") or {})):
                _refuse(path, "holds range constraints that are not shape symbols")
            _walk_graph(path, program.get("graph_module"))
            sample = z.read(f"{root}data/sample_inputs/{MODEL}.pt")
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError, zlib.error) as e:
            if isinstance(e, ArtifactError):
                raise
            raise ArtifactError(f"{path} is a corrupt torch.export archive: {str(e)[:200]}") from None
    _check_sample_inputs(path, sample)


def _check_sample_inputs(path: Path, data: bytes) -> None:
    """The safe unpickler must read them: torch falls back to a full unpickle when it cannot."""
    import torch

    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception:  # noqa: BLE001 - whatever the safe unpickler refuses, with any error type
        _refuse(path, "holds sample inputs that are not plain tensors")
