"""The manifest schema: the type and range of every field, checked before any field is used.

The C++ engine reads the same manifest (``cpp/src/config.cpp``, ``cpp/src/engine.cpp``) with the
same bounds; ``tests/test_robustness_artifacts.py`` feeds both the same bad manifests.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..errors import ArtifactError
from ..spec import DETECTION_TASK, PATCH_SIZE, TASKS, WINDOW_SIZE, output_names
from .formats import FORMATS
from .paths import path_problem

SCHEMA_VERSION = 1
REQUIRED = ("format", "task", "arch", "head", "input_size", "max_batch", "precision", "rope_mode", "preprocessing",
            "outputs")
MAX_MANIFEST_BYTES = 16 << 20  # as the C++ reader (kMaxManifest)
MAX_DEPTH = 64  # JSON nesting, as the C++ reader (JsonLimits::max_depth)
MAX_BATCH = 1024  # as the C++ reader (kMaxBatch)
# input sides: multiples of the patch (the 4K tokenizer's window of patches), at most the reference
# export's 2048x1536 (4096x3072 for the 4K model), as the C++ reader (config.cpp input_size_problem)
MAX_SIDE, MAX_PIXELS, MAX_SIDE_4K, MAX_PIXELS_4K = 2048, 2048 * 1536, 4096, 4096 * 3072
MAX_FILES = 4096
MAX_FILE_SIZE = 1 << 44
ROPE_MODES = ("bf16", "fp32")
# arch fields the engine reads: (lowest, highest), as cpp/src/config.cpp parse_arch
ARCH_INTS = {"embed_dim": (1, 1 << 16), "depth": (1, 1024), "num_heads": (1, 4096), "ffn_hidden": (1, 1 << 18),
             "tokenizer_depth": (0, 64)}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def parse_json(text: str, where: str) -> Any:
    """JSON text of a manifest: at most MAX_MANIFEST_BYTES, MAX_DEPTH levels, no NaN/Infinity."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{where} is larger than the {MAX_MANIFEST_BYTES}-byte limit for a manifest")

    def refuse(name: str):
        raise ValueError(f"{name} is not a JSON number")

    try:
        data = json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise ArtifactError(f"{where} is not valid JSON: {str(e)[:200] or type(e).__name__}") from None
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ArtifactError(f"{where} nests JSON deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return data


def validate(data: Any, where: str) -> None:
    """Raise an ArtifactError naming the first field of ``data`` that is not what the schema says."""
    if not isinstance(data, dict):
        raise ArtifactError(f"{where} must hold a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if not is_int(version, 1, 1 << 31):
        raise ArtifactError(f"{where}: schema_version must be an integer from 1, got {_show(version)}")
    if version > SCHEMA_VERSION:
        raise ArtifactError(f"{where} uses manifest schema {version}, newer than this SDK's {SCHEMA_VERSION}; "
                            "upgrade sapiens2-edge (pip install -U sapiens2-edge) to read it")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ArtifactError(f"{where} lacks the fields {missing}")

    def bad(key: str, expected: str):
        raise ArtifactError(f"{where}: {key} must be {expected}, got {_show(data.get(key))}")

    fmt = data["format"]
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ArtifactError(f"{where} has unknown format {_show(fmt)}; expected one of {tuple(FORMATS)}")
    task = data["task"]
    if task is not None and (not isinstance(task, str) or task not in (*TASKS, DETECTION_TASK)):
        bad("task", f"null (a backbone), one of {', '.join(TASKS)} or {DETECTION_TASK!r} (the person detector)")
    _check_arch(data["arch"], where)
    head = data["head"]
    if head is not None and (not isinstance(head, dict) or head.get("task", task) != task):
        bad("head", f"null or an object whose task is the manifest's ({task!r})")
    _check_input_size(data["input_size"], data["arch"], where)
    if not is_int(data["max_batch"], 1, MAX_BATCH):
        bad("max_batch", f"an integer in 1..{MAX_BATCH}")
    precisions = dict.fromkeys((*FORMATS[fmt].precisions, *FORMATS[fmt].schemes))
    if not isinstance(data["precision"], str) or data["precision"] not in precisions:
        bad("precision", f"one of {', '.join(precisions)} (for a {fmt} artifact)")
    if data["rope_mode"] not in ROPE_MODES and not (task == DETECTION_TASK and data["rope_mode"] is None):
        bad("rope_mode", "'bf16' or 'fp32'" + (" (or null: a detector has no RoPE)" if task == DETECTION_TASK else ""))
    if not isinstance(data["outputs"], list) or data["outputs"] != list(output_names(task)):
        bad("outputs", f"the {task or 'backbone'} outputs {list(output_names(task))}")
    for key in ("preprocessing", "fidelity", "options", "files"):
        if key in data and not isinstance(data[key], dict):
            bad(key, "a JSON object")
    for key in ("sdk_version", "created"):
        if key in data and not isinstance(data[key], str):
            bad(key, "a string")
    if data.get("quantization") is not None and not isinstance(data["quantization"], dict):
        bad("quantization", "null or a JSON object")
    tol = data.get("fidelity", {}).get("tolerance", 0.0)
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and math.isfinite(tol) and tol >= 0):
        raise ArtifactError(f"{where}: fidelity.tolerance must be a finite number >= 0, got {_show(tol)}")
    _check_files(data.get("files", {}), where)


def _check_arch(arch: Any, where: str) -> None:
    if not isinstance(arch, dict):
        raise ArtifactError(f"{where}: arch must be a JSON object, got {_show(arch)}")
    for key, (lo, hi) in ARCH_INTS.items():
        if key in arch and not is_int(arch[key], lo, hi):
            raise ArtifactError(f"{where}: arch.{key} must be an integer in {lo}..{hi}, got {_show(arch[key])}")
    kv = arch.get("kv_heads")
    if kv is not None and not (isinstance(kv, list) and len(kv) <= 1024 and all(is_int(v, 1, 4096) for v in kv)):
        raise ArtifactError(f"{where}: arch.kv_heads must be a list of integers in 1..4096, got {_show(kv)}")


def input_size_problem(arch: dict, h: int, w: int) -> str | None:
    """Why an H x W input does not suit ``arch`` (None when it does), worded as the C++ engine's."""
    four_k = bool(arch.get("tokenizer_depth", 0))
    step = PATCH_SIZE * (WINDOW_SIZE if four_k else 1)
    side, pixels = (MAX_SIDE_4K, MAX_PIXELS_4K) if four_k else (MAX_SIDE, MAX_PIXELS)
    if h < step or w < step or h % step or w % step:
        return (f"input size {h}x{w} is not a positive multiple of {step} in both sides"
                + (" (the 4K tokenizer needs 64)" if four_k else ""))
    if h > side or w > side or h * w > pixels:
        why = "4096x3072, the 4K model's training size" if four_k else "2048x1536, the largest size of the reference export"
        return f"input size {h}x{w} is larger than the engine takes: at most {side} a side and {pixels} pixels ({why})"
    return None


def _check_input_size(size: Any, arch: dict, where: str) -> None:
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v, -(1 << 62), 1 << 62) for v in size)):
        raise ArtifactError(f"{where}: input_size must be [H, W] (two integers), got {_show(size)}")
    problem = input_size_problem(arch, *size)
    if problem:
        raise ArtifactError(f"{where}.input_size: {problem}")


def _check_files(files: dict, where: str) -> None:
    if len(files) > MAX_FILES:
        raise ArtifactError(f"{where}: files lists {len(files)} entries, more than the {MAX_FILES} an artifact holds")
    for rel, info in files.items():
        problem = path_problem(rel)
        if problem:
            raise ArtifactError(f"{where}: the file name {rel[:200]!r} {problem}; an artifact lists its files as "
                                "relative paths inside its directory (e.g. 'model.onnx')")
        if rel == "manifest.json":
            raise ArtifactError(f"{where}: files lists manifest.json itself")
        if not isinstance(info, dict):
            raise ArtifactError(f"{where}: files[{rel!r}] must be an object with sha256, size and role, "
                                f"got {_show(info)}")
        if not (isinstance(info.get("sha256"), str) and _SHA256.fullmatch(info["sha256"])):
            raise ArtifactError(f"{where}: files[{rel!r}].sha256 must be 64 lowercase hex digits, "
                                f"got {_show(info.get('sha256'))}")
        if not is_int(info.get("size"), 0, MAX_FILE_SIZE):
            raise ArtifactError(f"{where}: files[{rel!r}].size must be an integer in 0..{MAX_FILE_SIZE}, "
                                f"got {_show(info.get('size'))}")
        if not isinstance(info.get("role"), str):
            raise ArtifactError(f"{where}: files[{rel!r}].role must be a string, got {_show(info.get('role'))}")
