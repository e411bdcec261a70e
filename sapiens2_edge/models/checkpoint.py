"""Safetensors checkpoints: header validation, tensor I/O, key prefixes, HF ids and local cache.

Security rules this module keeps:

* Nothing is ever unpickled. There is no ``torch.load`` here; ``.pth`` / ``.bin`` / ``.pt``
  files are refused by name before a single byte is read from them.
* A safetensors header is validated in full (sizes, dtypes, shapes, offsets, overlaps, holes,
  truncation) by :func:`read_header` before any tensor data is touched, and every problem is a
  :class:`~sapiens2_edge.errors.CorruptCheckpointError` naming the file, the tensor and what
  was wrong. Nothing is allocated from a size the file claims until that size has been checked
  against the real file size.

``read_header``, ``header_summary``, ``official_filename`` and ``resolve_checkpoint`` need only
the standard library (``huggingface_hub`` is optional and imported on demand). ``torch`` is
imported inside :func:`read_tensors` and :func:`write_tensors` only.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from sapiens2_edge.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    StateDictMismatchError,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "SAFETENSORS_DTYPES",
    "MAX_HEADER_BYTES",
    "PICKLE_SUFFIXES",
    "TensorInfo",
    "SafetensorsHeader",
    "read_header",
    "read_tensors",
    "write_tensors",
    "strip_wrapper_prefixes",
    "split_layout",
    "resolve_checkpoint",
    "official_filename",
    "header_summary",
    "checkpoint_root",
    "BACKBONE_ROOTS",
    "WRAPPER_PREFIXES",
]

# --------------------------------------------------------------------------------------------
# Format constants
# --------------------------------------------------------------------------------------------

#: safetensors dtype name -> bytes per element (byte-sized dtypes only; the sub-byte F4/F6
#: formats are not used by Sapiens2 and are refused as unknown).
SAFETENSORS_DTYPES: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1,
    "F8_E8M0": 1,
    "C64": 8,
}

#: The same limit the reference safetensors implementation uses (100 MB).
MAX_HEADER_BYTES = 100_000_000

#: File suffixes of pickle-based checkpoints. These are refused, never opened.
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle", ".tar")

#: Wrapper prefixes that training / compile / DDP wrappers put in front of every key.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")

#: First dotted component of every backbone key (spec 1.7).
BACKBONE_ROOTS = frozenset(
    {"cls_token", "storage_tokens", "patch_embed", "rope_embed", "ln1", "blocks", "tokenizer"}
)

_BACKBONE_PREFIX = "backbone."
_HEAD_PREFIX = "decode_head."
_METADATA_KEY = "__metadata__"
_INT64_MAX = 2**63 - 1
_DEFAULT_ROOT = "~/sapiens2_host"
_ROOT_ENV = "SAPIENS_CHECKPOINT_ROOT"


def _shorten(items: Iterable[str], limit: int = 5) -> str:
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:limit])
    if len(items) > limit:
        shown += f", ... ({len(items) - limit} more)"
    return shown


# --------------------------------------------------------------------------------------------
# Header
# --------------------------------------------------------------------------------------------


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


def _reject_constant(value: str) -> Any:
    raise ValueError(f"non-standard JSON constant {value!r}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file without reading any tensor data.

    Raises :class:`CorruptCheckpointError` (naming the file, the tensor and the problem) for
    anything that is not a well-formed safetensors file, and :class:`CheckpointNotFoundError`
    when the file does not exist.
    """
    p = Path(path).expanduser()
    where = f"safetensors file {str(p)!r}"
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(_pickle_refusal(p))
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

    data_start = 8 + n
    data_len = file_size - data_start

    metadata: dict[str, str] = {}
    if _METADATA_KEY in obj:
        meta = obj[_METADATA_KEY]
        if meta is None:
            meta = {}
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
        metadata = dict(meta)

    tensors: dict[str, TensorInfo] = {}
    for name, entry in obj.items():
        if name == _METADATA_KEY:
            continue
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
                f"{what}: unknown dtype {dtype!r}; expected one of "
                f"{', '.join(SAFETENSORS_DTYPES)}"
            )
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(
            _is_int(d) and 0 <= d <= _INT64_MAX for d in shape
        ):
            raise CorruptCheckpointError(
                f"{what}: invalid shape {shape!r:.100}; expected a list of non-negative integers "
                "(each below 2**63)"
            )
        offsets = entry["data_offsets"]
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
        ):
            raise CorruptCheckpointError(
                f"{what}: invalid data_offsets {offsets!r:.100}; expected [begin, end] integers"
            )
        begin, end = offsets
        if begin < 0 or end < begin or end > _INT64_MAX:
            raise CorruptCheckpointError(
                f"{what}: invalid data_offsets [{begin}, {end}]; expected 0 <= begin <= end "
                "< 2**63"
            )
        itemsize = SAFETENSORS_DTYPES[dtype]
        numel = math.prod(shape)
        expected = numel * itemsize
        if end - begin != expected:
            raise CorruptCheckpointError(
                f"{what}: data_offsets [{begin}, {end}] span {end - begin} bytes but shape "
                f"{tuple(shape)} of {dtype} needs {numel} x {itemsize} = {expected} bytes"
            )
        tensors[name] = TensorInfo(name, dtype, tuple(shape), begin, end)

    # Offsets: no overlap, no holes, no truncation, no trailing bytes.
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


# --------------------------------------------------------------------------------------------
# Tensor data (torch imported lazily)
# --------------------------------------------------------------------------------------------


def _torch_dtype(name: str) -> "torch.dtype | None":
    import torch

    table = {
        "F64": "float64",
        "F32": "float32",
        "F16": "float16",
        "BF16": "bfloat16",
        "I64": "int64",
        "I32": "int32",
        "I16": "int16",
        "I8": "int8",
        "U64": "uint64",
        "U32": "uint32",
        "U16": "uint16",
        "U8": "uint8",
        "BOOL": "bool",
        "F8_E4M3": "float8_e4m3fn",
        "F8_E5M2": "float8_e5m2",
        "F8_E4M3FNUZ": "float8_e4m3fnuz",
        "F8_E5M2FNUZ": "float8_e5m2fnuz",
        "F8_E8M0": "float8_e8m0fnu",
        "C64": "complex64",
    }
    attr = table.get(name)
    return getattr(torch, attr, None) if attr else None


def read_tensors(
    path: str | os.PathLike,
    names: Iterable[str] | None = None,
    device: "str | torch.device" = "cpu",
) -> dict[str, "torch.Tensor"]:
    """Read tensors (all, or ``names``) from a safetensors file, in their stored dtype.

    The header is validated by :func:`read_header` first; the data is then read through
    ``safetensors.safe_open`` and each tensor is checked against the header. Tensors are
    loaded on the CPU and moved to ``device`` afterwards.
    """
    header = read_header(path)
    where = f"safetensors file {str(header.path)!r}"
    if names is None:
        wanted = list(header.tensors)
    else:
        if isinstance(names, str):
            names = [names]
        wanted = list(dict.fromkeys(names))
        missing = [n for n in wanted if n not in header.tensors]
        if missing:
            raise StateDictMismatchError(
                f"{where} has no tensor named {_shorten(missing)}; it holds "
                f"{len(header.tensors)} tensors, e.g. {_shorten(list(header.tensors), 3)}"
            )

    import torch

    target = None
    if device is not None and str(device) != "cpu":
        try:
            target = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as e:
            raise ConfigError(f"invalid device {device!r}: {e}") from None

    for n in wanted:
        info = header.tensors[n]
        if _torch_dtype(info.dtype) is None:
            raise CheckpointError(
                f"{where}, tensor {n!r}: dtype {info.dtype} has no torch equivalent in torch "
                f"{torch.__version__}"
            )

    from safetensors import SafetensorError, safe_open

    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(header.path), framework="pt", device="cpu") as f:
            for n in wanted:
                out[n] = f.get_tensor(n)
    except SafetensorError as e:
        raise CorruptCheckpointError(f"{where}: safetensors refused the file: {e}") from e
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
        raise CorruptCheckpointError(f"{where}: could not read tensor data: {e}") from e

    for n, t in out.items():
        info = header.tensors[n]
        if tuple(t.shape) != info.shape or t.dtype != _torch_dtype(info.dtype):
            # The file changed between reading the header and the data.
            raise CorruptCheckpointError(
                f"{where}, tensor {n!r}: data read as {t.dtype} {tuple(t.shape)} but the header "
                f"says {info.dtype} {info.shape} (file modified while reading?)"
            )
    if target is not None:
        out = {n: t.to(target) for n, t in out.items()}
    return out


def write_tensors(
    tensors: Mapping[str, "torch.Tensor"],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` to ``path`` as safetensors, atomically (temporary file + os.replace).

    Tensors are detached, made contiguous and moved to the CPU; tensors sharing storage
    (tied weights) are copied so each has its own bytes. Returns the final path.
    """
    import torch
    from safetensors.torch import save_file

    p = Path(path).expanduser()
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"refusing to write {str(p)!r}: checkpoints are written as .safetensors only"
        )
    if not isinstance(tensors, Mapping):
        raise CheckpointError(
            f"write_tensors expects a mapping of name -> torch.Tensor, got {type(tensors).__name__}"
        )
    meta: dict[str, str] | None = None
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise CheckpointError(
                f"metadata must be a mapping of str -> str, got {type(metadata).__name__}"
            )
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise CheckpointError(
                f"metadata must map str -> str; entries with other types: {_shorten(map(str, bad))}"
            )
        meta = dict(metadata)

    prepared: dict[str, torch.Tensor] = {}
    seen_storage: set[tuple[str, int]] = set()
    for name, t in tensors.items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"tensor names must be non-empty strings, got {name!r}")
        if name == _METADATA_KEY:
            raise CheckpointError(f"{_METADATA_KEY!r} is reserved and cannot be a tensor name")
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(
                f"tensor {name!r} is a {type(t).__name__}, expected a torch.Tensor"
            )
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.layout != torch.strided:
            t = t.to_dense()
        t = t.contiguous()
        if t.numel() > 0:
            key = (t.device.type, t.untyped_storage().data_ptr())
            whole = t.data_ptr() == t.untyped_storage().data_ptr() and (
                t.numel() * t.element_size() == t.untyped_storage().nbytes()
            )
            if key in seen_storage or not whole:
                t = t.clone()
                key = (t.device.type, t.untyped_storage().data_ptr())
            seen_storage.add(key)
        prepared[name] = t

    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        save_file(prepared, str(tmp), metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates its files 0600; give the usual permissions
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


# --------------------------------------------------------------------------------------------
# Key names
# --------------------------------------------------------------------------------------------


def _strip_one(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                changed = True
    return key


def strip_wrapper_prefixes(names_or_dict: Any) -> Any:
    """Remove leading ``module.``, ``_orig_mod.`` and ``model.`` (repeatedly, in any order).

    A mapping gives a new dict with the stripped keys (same values, same order); any other
    iterable of names gives a list of stripped names. Two keys that become the same name,
    or a key that becomes empty, raise :class:`CheckpointError` naming them.
    """
    is_map = isinstance(names_or_dict, Mapping)
    if isinstance(names_or_dict, str):
        raise CheckpointError(
            "strip_wrapper_prefixes expects a mapping or a list of names, got a str"
        )
    keys = list(names_or_dict.keys() if is_map else names_or_dict)
    origin: dict[str, str] = {}
    for key in keys:
        if not isinstance(key, str):
            raise CheckpointError(f"checkpoint key {key!r} is not a string")
        new = _strip_one(key)
        if not new:
            raise CheckpointError(
                f"checkpoint key {key!r} is nothing but wrapper prefixes "
                f"({', '.join(WRAPPER_PREFIXES)})"
            )
        if new in origin:
            raise CheckpointError(
                f"checkpoint keys {origin[new]!r} and {key!r} both become {new!r} once the "
                f"wrapper prefixes ({', '.join(WRAPPER_PREFIXES)}) are removed; the file holds "
                "two copies of the same tensor"
            )
        origin[new] = key
    if is_map:
        return {_strip_one(k): names_or_dict[k] for k in keys}
    return list(origin)


def split_layout(
    keys: Iterable[str] | Mapping[str, Any],
) -> tuple[str, dict[str, str], dict[str, str]]:
    """Work out the key layout of a checkpoint.

    Returns ``(layout, backbone_map, head_map)``: ``layout`` is ``"pretrain"`` (bare backbone
    keys, spec 1.7) or ``"task"`` (``backbone.`` + ``decode_head.`` keys, spec 1.10); each map
    goes from the local name (``blocks.0.ln1.weight``, ``conv_seg.weight``) to the original
    file key. Wrapper prefixes are stripped first. A file whose keys are all under
    ``backbone.`` (no head) is a prefixed backbone and comes back as ``"pretrain"``.

    Raises :class:`CheckpointError` for mixed layouts and a head without a backbone, and
    :class:`StateDictMismatchError` (a CheckpointError) for keys that belong to neither.
    """
    original = list(keys.keys() if isinstance(keys, Mapping) else keys)
    if not original:
        raise CheckpointError("the checkpoint holds no tensors")
    stripped = strip_wrapper_prefixes(original)  # same order as `original`
    bare: dict[str, str] = {}
    backbone: dict[str, str] = {}
    head: dict[str, str] = {}
    unknown: list[str] = []
    for local, orig in zip(stripped, original, strict=True):
        if local.startswith(_BACKBONE_PREFIX):
            sub = local[len(_BACKBONE_PREFIX):]
            if sub.split(".", 1)[0] in BACKBONE_ROOTS:
                backbone[sub] = orig
            else:
                unknown.append(orig)
        elif local.startswith(_HEAD_PREFIX):
            sub = local[len(_HEAD_PREFIX):]
            if sub:
                head[sub] = orig
            else:
                unknown.append(orig)
        elif local.split(".", 1)[0] in BACKBONE_ROOTS:
            bare[local] = orig
        else:
            unknown.append(orig)

    if bare and (backbone or head):
        prefixed = list(backbone.values()) + list(head.values())
        raise CheckpointError(
            "mixed checkpoint layout: some keys are bare backbone keys (e.g. "
            f"{_shorten(bare.values(), 3)}) and others are under 'backbone.'/'decode_head.' "
            f"(e.g. {_shorten(prefixed, 3)}); expected either only bare backbone keys "
            "(pretrain) or only 'backbone.' + 'decode_head.' keys (task)"
        )
    if head and not backbone:
        raise CheckpointError(
            f"the checkpoint has {len(head)} 'decode_head.' keys (e.g. "
            f"{_shorten(head.values(), 3)}) but no 'backbone.' keys; a task checkpoint needs both"
        )
    if unknown:
        known = "bare backbone keys" if bare else "'backbone.' / 'decode_head.' keys"
        raise StateDictMismatchError(
            f"{len(unknown)} checkpoint keys are neither backbone nor head keys: "
            f"{_shorten(unknown)}; expected {known} (backbone keys start with "
            f"{', '.join(sorted(BACKBONE_ROOTS))})"
        )
    if bare:
        return "pretrain", bare, {}
    if backbone and not head:
        return "pretrain", backbone, {}
    return "task", backbone, head


# --------------------------------------------------------------------------------------------
# Official names, local root, Hugging Face
# --------------------------------------------------------------------------------------------

_PRETRAIN_SIZES = ("0.1b", "0.4b", "0.8b", "1b", "1b-4k", "5b")
_TASKS = ("pose", "seg", "normal", "pointmap")
_TASK_SIZES = ("0.4b", "0.8b", "1b", "5b")
_DETECTOR_REPO = "sapiens-pose-bbox-detector"
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def official_filename(repo_id: str) -> str | None:
    """The README file name (relative to ``$SAPIENS_CHECKPOINT_ROOT``) for a Sapiens2 repo id.

    ``facebook/sapiens2-seg-0.4b`` -> ``seg/sapiens2_0.4b_seg.safetensors``;
    ``facebook/sapiens2-pretrain-1b-4k`` -> ``pretrain/sapiens2_1b_4k_pretrain.safetensors``;
    ``facebook/sapiens-pose-bbox-detector`` -> ``detector/rtmdet_m.pth``. ``None`` for any
    other id (including task/size pairs that were never released). The owner is not checked,
    so mirrors under another owner map to the same name.
    """
    if not isinstance(repo_id, str) or not _HF_ID.match(repo_id):
        return None
    name = repo_id.split("/", 1)[1].lower()
    if name == _DETECTOR_REPO:
        return "detector/rtmdet_m.pth"
    if not name.startswith("sapiens2-"):
        return None
    rest = name[len("sapiens2-"):]
    task, _, size = rest.partition("-")
    if task == "pretrain" and size in _PRETRAIN_SIZES:
        return f"pretrain/sapiens2_{size.replace('-', '_')}_pretrain.safetensors"
    if task in _TASKS and size in _TASK_SIZES:
        return f"{task}/sapiens2_{size}_{task}.safetensors"
    return None


def checkpoint_root() -> Path:
    """``$SAPIENS_CHECKPOINT_ROOT`` (read at call time), default ``~/sapiens2_host``."""
    return Path(os.environ.get(_ROOT_ENV) or _DEFAULT_ROOT).expanduser()


def _pickle_refusal(p: Path) -> str:
    return (
        f"{str(p)!r} is a pickle-based checkpoint ({p.suffix}); pickle-based checkpoints are "
        "never loaded because unpickling can run arbitrary code. Convert it to safetensors "
        "in an environment you trust (e.g. load it there with torch.load(..., "
        "weights_only=True) and save the state_dict with safetensors.torch.save_file), or "
        "download the official .safetensors file"
    )


def _looks_like_safetensors(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


def _resolve_file(p: Path) -> Path:
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return p
    if suffix in PICKLE_SUFFIXES:
        raise CheckpointError(_pickle_refusal(p))
    if _looks_like_safetensors(p):
        return p
    raise CheckpointError(
        f"{str(p)!r} is not a safetensors file (expected a .safetensors file, a directory "
        "holding one, or a Hugging Face repo id such as 'facebook/sapiens2-seg-0.4b')"
    )


def _pick_safetensors(files: list[Path], where: str, preferred: str | None = None) -> Path | None:
    """Choose one file: the preferred name, else the only one, else model.safetensors."""
    if not files:
        return None
    if preferred is not None:
        hits = sorted((f for f in files if f.name == preferred), key=lambda f: len(f.parts))
        if hits:
            return hits[0]
    if len(files) == 1:
        return files[0]
    named = sorted((f for f in files if f.name == "model.safetensors"), key=lambda f: len(f.parts))
    if named:
        return named[0]
    sharded = any(re.search(r"-\d+-of-\d+\.safetensors$", f.name) for f in files)
    hint = (
        " (this looks like a sharded checkpoint; merge the shards into one file)"
        if sharded
        else ""
    )
    raise CheckpointError(
        f"{where} holds {len(files)} .safetensors files and none is named "
        f"'model.safetensors', so which one to load is ambiguous: "
        f"{_shorten([f.name for f in files], 10)}{hint}; pass the file path instead"
    )


def _resolve_dir(d: Path) -> Path:
    files = sorted(f for f in d.glob("*.safetensors") if f.is_file())
    picked = _pick_safetensors(files, f"directory {str(d)!r}")
    if picked is not None:
        return picked
    pickles = sorted(f.name for f in d.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)
    extra = (
        f"; it holds pickle-based files ({_shorten(pickles)}), which are never loaded: "
        "convert them to safetensors"
        if pickles
        else ""
    )
    raise CheckpointNotFoundError(f"directory {str(d)!r} holds no .safetensors file{extra}")


def _hf_cache_dir(hub: Any) -> str:
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return str(Path(env["HF_HUB_CACHE"]).expanduser())
    if env.get("HUGGINGFACE_HUB_CACHE"):
        return str(Path(env["HUGGINGFACE_HUB_CACHE"]).expanduser())
    if env.get("HF_HOME"):
        return str(Path(env["HF_HOME"]).expanduser() / "hub")
    default = Path("~/.cache/huggingface/hub").expanduser()
    return str(getattr(hub.constants, "HF_HUB_CACHE", default))


def _hf_offline(hub: Any) -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    return bool(getattr(hub.constants, "HF_HUB_OFFLINE", False))


def _how_to_get(repo_id: str, official: str | None) -> str:
    root = checkpoint_root()
    lines = [
        "To get it, either:",
        f"  - download it: hf download {repo_id} --include '*.safetensors'",
        "    (older huggingface_hub: "
        f"huggingface-cli download {repo_id} --include '*.safetensors');",
        "    gated repos need `hf auth login` and the license accepted on huggingface.co",
    ]
    if official is not None:
        lines.append(f"  - or put the file at ${_ROOT_ENV}/{official} (here: {root / official})")
    lines.append("  - or pass the path of a local .safetensors file")
    return "\n".join(lines)


def _resolve_hf(repo_id: str) -> Path:
    official = official_filename(repo_id)
    if official is not None and not official.endswith(".safetensors"):
        raise CheckpointError(
            f"{repo_id!r} ships only a pickle-based checkpoint ({official}); pickle-based "
            "checkpoints are never loaded. Convert it to safetensors first"
        )
    tried: list[str] = []
    if official is not None:
        candidate = checkpoint_root() / official
        if candidate.is_file():
            return _resolve_file(candidate)
        tried.append(f"${_ROOT_ENV}/{official} ({candidate}): no such file")
    else:
        tried.append(
            f"${_ROOT_ENV}: {repo_id!r} is not an official Sapiens2 repo id, "
            "no file name to look for"
        )
    preferred = Path(official).name if official else None

    try:
        import huggingface_hub as hub
        import huggingface_hub.constants  # noqa: F401 - a lazy submodule in huggingface_hub >= 1.0
    except ImportError:
        tried.append(
            "Hugging Face cache: huggingface_hub is not installed (pip install huggingface_hub)"
        )
        raise CheckpointNotFoundError(
            f"checkpoint {repo_id!r} was not found locally and huggingface_hub is not installed "
            "(pip install huggingface_hub).\nTried:\n  - "
            + "\n  - ".join(tried)
            + "\n"
            + _how_to_get(repo_id, official)
        ) from None

    cache_dir = _hf_cache_dir(hub)
    offline = _hf_offline(hub)
    patterns = ["*.safetensors", "*.json"]

    def _pick(folder: str) -> Path | None:
        root = Path(folder)
        files = sorted(f for f in root.rglob("*.safetensors") if f.is_file())
        where = f"Hugging Face snapshot {str(root)!r} of {repo_id!r}"
        return _pick_safetensors(files, where, preferred)

    attempts = [True] if offline else [True, False]
    for local_only in attempts:
        try:
            folder = hub.snapshot_download(
                repo_id,
                allow_patterns=patterns,
                local_files_only=local_only,
                cache_dir=cache_dir,
            )
        except Exception as e:  # noqa: BLE001 - any hub failure means "not found here"
            kind = "cache" if local_only else "download"
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            tried.append(f"Hugging Face {kind} ({cache_dir}): {type(e).__name__}: {msg}")
            continue
        picked = _pick(str(folder))
        if picked is not None:
            return picked
        kind = "cache" if local_only else "download"
        tried.append(f"Hugging Face {kind} ({folder}): no .safetensors file in the snapshot")
    if offline:
        tried.append("Hugging Face download: skipped, HF_HUB_OFFLINE is set")
    raise CheckpointNotFoundError(
        f"checkpoint {repo_id!r} was not found"
        + (" locally and HF_HUB_OFFLINE=1 forbids downloading it" if offline else "")
        + ".\nTried:\n  - "
        + "\n  - ".join(tried)
        + "\n"
        + _how_to_get(repo_id, official)
    )


def resolve_checkpoint(spec: str | os.PathLike) -> Path:
    """Turn a file path, a directory or a Hugging Face repo id into a local .safetensors path.

    1. an existing file: a ``.safetensors`` file (or one whose bytes look like safetensors) is
       returned as is; ``.pth``/``.bin``/``.pt``/... are refused without being opened;
    2. an existing directory: its single ``*.safetensors`` (``model.safetensors`` when there
       are several);
    3. ``owner/name`` that is not an existing path: ``$SAPIENS_CHECKPOINT_ROOT/<official
       name>``, then the Hugging Face cache, then (unless offline) a download;
    4. anything else: :class:`CheckpointNotFoundError` saying what was tried.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise CheckpointError(
            f"checkpoint must be a path or a Hugging Face repo id, got {type(spec).__name__}"
        )
    raw = os.fspath(spec)
    if isinstance(raw, bytes):
        raw = os.fsdecode(raw)
    if not raw.strip():
        raise CheckpointNotFoundError("empty checkpoint path / repo id")
    p = Path(raw).expanduser()
    if p.is_file():
        return _resolve_file(p)
    if p.is_dir():
        return _resolve_dir(p)
    looks_like_path = (
        p.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES)
        or raw.startswith(("/", ".", "~"))
        or os.sep in raw.replace("/", "")
    )
    if isinstance(spec, str) and not looks_like_path and _HF_ID.match(raw):
        return _resolve_hf(raw)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointNotFoundError(
            f"no file at {str(p)!r} (and pickle-based checkpoints such as {p.suffix} are never "
            "loaded anyway: pass a .safetensors file)"
        )
    raise CheckpointNotFoundError(
        f"checkpoint {raw!r} not found: it is not an existing file or directory"
        + (
            ""
            if looks_like_path or not isinstance(spec, str)
            else ", nor a Hugging Face repo id of the form 'owner/name' "
            "(e.g. 'facebook/sapiens2-seg-0.4b')"
        )
        + ". Pass a .safetensors file, a directory holding one, or a repo id"
    )
