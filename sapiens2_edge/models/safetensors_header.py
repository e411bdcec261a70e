"""Safetensors headers: our own bounds-checked parser, validated in full before any data is read.

Security rules this module keeps:

* Nothing is ever unpickled. ``.pth`` / ``.bin`` / ``.pt`` ... files are refused by name
  before a single byte is read from them.
* A header is validated in full (sizes, dtypes, shapes, offsets, overlaps, holes, truncation)
  and every problem is a :class:`~sapiens2_edge.errors.CorruptCheckpointError` naming the file,
  the tensor and what was wrong. Nothing is allocated from a size the file claims until that
  size has been checked against the real file size.

Standard library only (no torch), so the CLI's ``info`` works without torch installed.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError

#: safetensors dtype -> (bytes per element, name of the torch dtype). Byte-sized dtypes only:
#: the sub-byte F4/F6 formats are not used by Sapiens2 and are refused as unknown.
DTYPE_TABLE: dict[str, tuple[int, str]] = {
    "F64": (8, "float64"),
    "F32": (4, "float32"),
    "F16": (2, "float16"),
    "BF16": (2, "bfloat16"),
    "I64": (8, "int64"),
    "I32": (4, "int32"),
    "I16": (2, "int16"),
    "I8": (1, "int8"),
    "U64": (8, "uint64"),
    "U32": (4, "uint32"),
    "U16": (2, "uint16"),
    "U8": (1, "uint8"),
    "BOOL": (1, "bool"),
    "F8_E4M3": (1, "float8_e4m3fn"),
    "F8_E5M2": (1, "float8_e5m2"),
    "F8_E4M3FNUZ": (1, "float8_e4m3fnuz"),
    "F8_E5M2FNUZ": (1, "float8_e5m2fnuz"),
    "F8_E8M0": (1, "float8_e8m0fnu"),
    "C64": (8, "complex64"),
}

#: safetensors dtype name -> bytes per element.
SAFETENSORS_DTYPES: dict[str, int] = {name: size for name, (size, _) in DTYPE_TABLE.items()}

#: The same limit the reference safetensors implementation uses (100 MB).
MAX_HEADER_BYTES = 100_000_000

#: File suffixes of pickle-based checkpoints. These are refused, never opened.
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle", ".tar")

#: The header entry that holds string metadata instead of a tensor.
METADATA_KEY = "__metadata__"

_INT64_MAX = 2**63 - 1

#: Most dimensions a tensor may have (the native reader's limit too; Sapiens2 tensors have <= 4).
MAX_DIMS = 8


def show_int(n: int) -> str:
    """An integer from a file for an error message: huge ones (which Python refuses to format past
    4,300 digits, and which say nothing anyway) become ``'a 5000-digit number'``."""
    if -(10**30) < n < 10**30:
        return str(n)
    return f"a {int(math.log10(abs(n))) + 1}-digit number"


def checked_numel(shape: Iterable[int], limit: int) -> int | None:
    """The product of ``shape``, or None as soon as it exceeds ``limit`` (a 0 dim gives 0): the
    cost stays bounded however large the dims are."""
    dims = list(shape)
    if 0 in dims:
        return 0
    n = 1
    for d in dims:
        n *= d
        if n > limit:
            return None
    return n


def shorten(items: Iterable[str], limit: int = 5) -> str:
    """``'a', 'b', ... (3 more)``: the first ``limit`` items of a listing in an error message."""
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:limit])
    if len(items) > limit:
        shown += f", ... ({len(items) - limit} more)"
    return shown


def pickle_refusal(p: Path) -> str:
    """The message that refuses a pickle-based checkpoint and says how to convert it."""
    return (
        f"{str(p)!r} is a pickle-based checkpoint ({p.suffix}); pickle-based checkpoints are "
        "never loaded because unpickling can run arbitrary code. Convert it to safetensors "
        "in an environment you trust (e.g. load it there with torch.load(..., "
        "weights_only=True) and save the state_dict with safetensors.torch.save_file), or "
        "download the official .safetensors file"
    )


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a safetensors header. Offsets are relative to the data start."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass
class SafetensorsHeader:
    """The validated header of a safetensors file (no tensor data)."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 0
    file_size: int = 0

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape, in header order."""
        return {name: info.shape for name, info in self.tensors.items()}

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __len__(self) -> int:
        return len(self.tensors)


# --------------------------------------------------------------------------------------------
# Reading the raw header bytes
# --------------------------------------------------------------------------------------------


def _read_raw_header(p: Path, where: str) -> tuple[bytes, int]:
    """The JSON header bytes and the file size, every length checked against the real file."""
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(pickle_refusal(p))
    try:
        f = open(p, "rb")
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(
            f"{where} is a directory, expected a .safetensors file "
            "(use resolve_checkpoint() to pick the file inside a directory)"
        ) from None
    except OSError as e:
        raise CheckpointError(f"cannot open {where}: {e}") from e
    with f:
        file_size = os.fstat(f.fileno()).st_size
        if file_size < 8:
            raise CorruptCheckpointError(
                f"{where} is only {file_size} bytes long; a safetensors file starts with an "
                "8-byte little-endian header length, so it is empty or truncated"
            )
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER_BYTES:
            raise CorruptCheckpointError(
                f"{where} declares a {n}-byte JSON header, more than the {MAX_HEADER_BYTES}-byte "
                "limit of the format; the file is corrupt or not a safetensors file"
            )
        if n > file_size - 8:
            raise CorruptCheckpointError(
                f"{where} declares a {n}-byte JSON header but only {file_size - 8} bytes follow "
                f"the 8-byte length prefix ({n - (file_size - 8)} bytes missing): the file is "
                "truncated or not a safetensors file"
            )
        if n == 0:
            raise CorruptCheckpointError(
                f"{where} has an empty (0-byte) JSON header; expected a JSON object"
            )
        raw = f.read(n)
        if len(raw) != n:  # the file shrank under us
            raise CorruptCheckpointError(
                f"{where}: could read only {len(raw)} of the {n} header bytes (file truncated)"
            )
    return raw, file_size


# --------------------------------------------------------------------------------------------
# Parsing the JSON
# --------------------------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_constant(value: str) -> Any:
    raise ValueError(f"non-standard JSON constant {value!r}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _parse_json(raw: bytes, where: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptCheckpointError(
            f"{where}: the header is not valid UTF-8 ({e.reason} at byte {e.start}); "
            "expected a UTF-8 JSON object"
        ) from None
    try:
        obj = json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant
        )
    except _DuplicateKey as e:
        raise CorruptCheckpointError(
            f"{where}: the header lists the key {e.key!r} more than once"
        ) from None
    except (ValueError, RecursionError) as e:
        raise CorruptCheckpointError(
            f"{where}: the header is not valid JSON ({e}); expected a JSON object mapping "
            "tensor names to {dtype, shape, data_offsets}"
        ) from None
    if not isinstance(obj, dict):
        raise CorruptCheckpointError(
            f"{where}: the header is a JSON {type(obj).__name__}, expected a JSON object mapping "
            "tensor names to {dtype, shape, data_offsets}"
        )
    return obj


def _parse_metadata(meta: Any, where: str) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(
            f"{where}: '__metadata__' is a JSON {type(meta).__name__}, expected an object "
            "mapping strings to strings"
        )
    for k, v in meta.items():
        if not isinstance(v, str):
            raise CorruptCheckpointError(
                f"{where}: '__metadata__' entry {k!r} has a {type(v).__name__} value "
                f"({v!r:.60}); metadata must map strings to strings"
            )
    return dict(meta)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_entry(name: str, entry: Any, where: str, data_len: int) -> TensorInfo:
    what = f"{where}, tensor {name!r}"
    if not isinstance(entry, dict):
        raise CorruptCheckpointError(
            f"{what}: entry is a JSON {type(entry).__name__}, expected an object with "
            "dtype, shape and data_offsets"
        )
    for required in ("dtype", "shape", "data_offsets"):
        if required not in entry:
            raise CorruptCheckpointError(f"{what}: entry has no {required!r} field")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise CorruptCheckpointError(
            f"{what}: unknown dtype {dtype!r}; expected one of {', '.join(SAFETENSORS_DTYPES)}"
        )
    shape = entry["shape"]
    if isinstance(shape, list) and len(shape) > MAX_DIMS:
        raise CorruptCheckpointError(
            f"{what}: shape has {len(shape)} dimensions; at most {MAX_DIMS} are accepted"
        )
    if not isinstance(shape, list) or not all(_is_int(d) and 0 <= d <= _INT64_MAX for d in shape):
        shown = "[" + ", ".join(show_int(d) if _is_int(d) else repr(d)[:20] for d in shape) + "]" \
            if isinstance(shape, list) else f"{shape!r:.100}"
        raise CorruptCheckpointError(
            f"{what}: invalid shape {shown}; expected a list of non-negative integers (each below "
            f"2**63, at most {MAX_DIMS} of them)"
        )
    offsets = entry["data_offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise CorruptCheckpointError(
            f"{what}: invalid data_offsets {offsets!r:.100}; expected [begin, end] integers"
        )
    begin, end = offsets
    if begin < 0 or end < begin or end > _INT64_MAX:
        raise CorruptCheckpointError(
            f"{what}: invalid data_offsets [{show_int(begin)}, {show_int(end)}]; expected "
            "0 <= begin <= end < 2**63"
        )
    itemsize = SAFETENSORS_DTYPES[dtype]
    # Checked multiplication: the product stops growing past what the data region (or 2**64,
    # for the exact message below) could hold, however large the dims.
    numel = checked_numel(shape, max(data_len // itemsize, 1 << 64))
    if numel is None:
        raise CorruptCheckpointError(
            f"{what}: shape {tuple(shape)} of {dtype} needs more bytes than the whole data region "
            f"holds ({data_len} bytes); the header is corrupt"
        )
    expected = numel * itemsize
    if end - begin != expected:
        raise CorruptCheckpointError(
            f"{what}: data_offsets [{begin}, {end}] span {end - begin} bytes but shape "
            f"{tuple(shape)} of {dtype} needs {numel} x {itemsize} = {expected} bytes"
        )
    return TensorInfo(name, dtype, tuple(shape), begin, end)


def _check_coverage(tensors: dict[str, TensorInfo], where: str, data_start: int,
                    file_size: int) -> None:
    """Offsets: no overlap, no holes, no truncation, no trailing bytes."""
    data_len = file_size - data_start
    ordered = sorted(tensors.values(), key=lambda t: (t.begin, t.end))
    pos = 0
    prev: TensorInfo | None = None
    for t in ordered:
        if t.begin < pos:
            assert prev is not None
            raise CorruptCheckpointError(
                f"{where}: tensors {prev.name!r} (bytes [{prev.begin}, {prev.end})) and "
                f"{t.name!r} (bytes [{t.begin}, {t.end})) overlap; every tensor must have its "
                "own bytes"
            )
        if t.begin > pos:
            after = (
                f"after tensor {prev.name!r}" if prev is not None else "at the start of the data"
            )
            raise CorruptCheckpointError(
                f"{where}: {t.begin - pos} unindexed bytes (a hole) {after}, before tensor "
                f"{t.name!r} at offset {t.begin}; the data region must be fully indexed"
            )
        if t.end > pos:
            pos = t.end
            prev = t
    if pos > data_len:
        last = max(ordered, key=lambda t: t.end)
        raise CorruptCheckpointError(
            f"{where} is truncated: tensor {last.name!r} ends at data offset {last.end} but the "
            f"data region holds only {data_len} bytes ({pos - data_len} bytes missing; "
            f"expected a file of {data_start + pos} bytes, found {file_size})"
        )
    if pos < data_len:
        raise CorruptCheckpointError(
            f"{where} has {data_len - pos} trailing bytes after the last tensor (data region "
            f"is {data_len} bytes, the header indexes {pos}); the data region must be fully "
            "indexed"
        )


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file without reading any tensor data.

    Raises :class:`CorruptCheckpointError` (naming the file, the tensor and the problem) for
    anything that is not a well-formed safetensors file, and :class:`CheckpointNotFoundError`
    when the file does not exist.
    """
    p = Path(path).expanduser()
    where = f"safetensors file {str(p)!r}"
    raw, file_size = _read_raw_header(p, where)
    obj = _parse_json(raw, where)
    metadata = _parse_metadata(obj.get(METADATA_KEY), where)
    data_start = 8 + len(raw)
    tensors = {
        name: _parse_entry(name, entry, where, file_size - data_start)
        for name, entry in obj.items()
        if name != METADATA_KEY
    }
    _check_coverage(tensors, where, data_start, file_size)
    return SafetensorsHeader(
        path=p, tensors=tensors, metadata=metadata, data_start=data_start, file_size=file_size
    )


def header_summary(header: SafetensorsHeader | str | os.PathLike) -> dict[str, Any]:
    """Summary of a header for ``sapiens2-edge info``.

    Keys: ``path``, ``file_size``, ``header_bytes``, ``num_tensors``, ``total_bytes``
    (tensor data), ``num_parameters`` (sum of numel), ``dtypes`` ({dtype: tensor count},
    most common first), ``dtype_bytes`` ({dtype: bytes}), ``metadata``.
    """
    if not isinstance(header, SafetensorsHeader):
        header = read_header(header)
    infos = list(header.tensors.values())
    counts = Counter(t.dtype for t in infos)
    dtype_bytes: dict[str, int] = {}
    for t in infos:
        dtype_bytes[t.dtype] = dtype_bytes.get(t.dtype, 0) + t.nbytes
    return {
        "path": str(header.path),
        "file_size": header.file_size,
        "header_bytes": header.data_start,
        "num_tensors": len(infos),
        "total_bytes": sum(t.nbytes for t in infos),
        "num_parameters": sum(t.numel for t in infos),
        "dtypes": dict(counts.most_common()),
        "dtype_bytes": {k: dtype_bytes[k] for k, _ in counts.most_common()},
        "metadata": dict(header.metadata),
    }


__all__ = [
    "DTYPE_TABLE", "SAFETENSORS_DTYPES", "MAX_HEADER_BYTES", "MAX_DIMS", "show_int", "checked_numel", "PICKLE_SUFFIXES", "METADATA_KEY",
    "TensorInfo", "SafetensorsHeader", "read_header", "header_summary", "shorten",
    "pickle_refusal",
]
