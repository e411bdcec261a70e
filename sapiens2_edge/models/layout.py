"""Torch-free checks of a checkpoint's layout: architecture and task from the header alone,
and the strict name/shape comparison (used by ``load_model`` and the CLI's ``info``)."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from ..errors import StateDictMismatchError
from .arch import HeadSpec, infer_arch, infer_head
from .checkpoint import read_header, split_layout

FLOAT_DTYPES = {"F32", "BF16", "F16"}
MAX_LISTED = 8


def _listing(names: Sequence[str]) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(repr(n) for n in names[:MAX_LISTED]) + more


def check_shapes(found: Mapping[str, tuple], expected: Mapping[str, tuple], where: str, prefix: str = "") -> None:
    """Raise :class:`StateDictMismatchError` naming every missing, unexpected or mis-shaped tensor."""
    missing = [prefix + k for k in expected if k not in found]
    unexpected = [prefix + k for k in found if k not in expected]
    wrong = [f"{prefix}{k}: file has {tuple(found[k])}, expected {tuple(v)}"
             for k, v in expected.items() if k in found and tuple(found[k]) != tuple(v)]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_listing(unexpected)}")
    if wrong:
        problems.append("mis-shaped tensors: " + "; ".join(wrong[:MAX_LISTED]))
    if problems:
        raise StateDictMismatchError(f"{where} does not match the inferred architecture: " + " | ".join(problems))


def describe_checkpoint(path: str | os.PathLike, input_size: Sequence[int] | None = None):
    """Header-only description: (header, layout, arch, head_spec, {local name: file key} per part).

    Used by ``load_model`` and by the CLI's ``info`` (which reads no weights)."""
    header = read_header(path)
    layout, bb_files, head_files = split_layout(list(header.tensors))  # local name -> file key
    bb_shapes = {k: header.tensors[v].shape for k, v in bb_files.items()}
    arch = infer_arch(bb_shapes)
    head = None
    if head_files:
        h_shapes = {k: header.tensors[v].shape for k, v in head_files.items()}
        head = infer_head(h_shapes, arch.embed_dim, arch.input_multiple)
        if input_size is not None and head.input_size is not None:
            head = HeadSpec.from_dict({**head.to_dict(), "input_size": tuple(input_size)})
    return header, layout, arch, head, bb_files, head_files
