"""Safetensors tensor data: reading (after the header is validated) and atomic writing.

Nothing is ever unpickled: data is read through ``safetensors.safe_open``, or as raw bytes at the
offsets of the header (:func:`iter_tensors`), only once :func:`~.safetensors_header.read_header` has
validated the whole header (offsets, overlaps, holes, truncation). ``torch`` is imported
inside the functions, so importing this module needs no torch.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping

from ..errors import CheckpointError, ConfigError, CorruptCheckpointError, StateDictMismatchError
from .safetensors_header import DTYPE_TABLE, METADATA_KEY, PICKLE_SUFFIXES, read_header, shorten

if TYPE_CHECKING:  # pragma: no cover
    import torch


def torch_dtype(name: str) -> "torch.dtype | None":
    """The torch dtype of a safetensors dtype name (``None``: unknown, or absent from this torch)."""
    import torch

    entry = DTYPE_TABLE.get(name)
    return getattr(torch, entry[1], None) if entry else None


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
                f"{where} has no tensor named {shorten(missing)}; it holds "
                f"{len(header.tensors)} tensors, e.g. {shorten(list(header.tensors), 3)}"
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
        if torch_dtype(info.dtype) is None:
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
        if tuple(t.shape) != info.shape or t.dtype != torch_dtype(info.dtype):
            # The file changed between reading the header and the data.
            raise CorruptCheckpointError(
                f"{where}, tensor {n!r}: data read as {t.dtype} {tuple(t.shape)} but the header "
                f"says {info.dtype} {info.shape} (file modified while reading?)"
            )
    if target is not None:
        out = {n: t.to(target) for n, t in out.items()}
    return out


def iter_tensors(path: str | os.PathLike, names: Iterable[str]) -> Iterator[tuple[str, "torch.Tensor"]]:
    """(name, tensor) for each of ``names`` in a safetensors file, one at a time, each read from the file
    straight into a fresh torch tensor of its stored dtype (torch's 64-byte aligned allocation) that
    nothing else holds: a loader that hands each on keeps the file's bytes once, not twice.
    (``safe_open`` copies into Python bytes objects, not 64-byte aligned, which torch's kernels can
    round differently on.) On a big-endian host the tensors come from :func:`read_tensors`."""
    import torch

    names = list(names)
    if sys.byteorder != "little":  # pragma: no cover - safetensors data is little-endian
        yield from read_tensors(path, names).items()
        return
    header = read_header(path)
    where = f"safetensors file {str(header.path)!r}"
    missing = [n for n in names if n not in header.tensors]
    if missing:
        raise StateDictMismatchError(f"{where} has no tensor named {shorten(missing)}")
    with open(header.path, "rb") as f:
        for n in names:
            info = header.tensors[n]
            dtype = torch_dtype(info.dtype)
            if dtype is None:
                raise CheckpointError(f"{where}, tensor {n!r}: dtype {info.dtype} has no torch equivalent in torch "
                                      f"{torch.__version__}")
            t = torch.empty(info.shape, dtype=dtype)
            if info.nbytes:
                f.seek(header.data_start + info.begin)
                got = f.readinto(memoryview(t.view(-1).view(torch.uint8).numpy()))
                if got != info.nbytes:
                    raise CorruptCheckpointError(f"{where}, tensor {n!r}: read {got} of its {info.nbytes} bytes "
                                                 "(file truncated or modified while reading?)")
            yield n, t


def _checked_metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise CheckpointError(
            f"metadata must be a mapping of str -> str, got {type(metadata).__name__}"
        )
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise CheckpointError(
            f"metadata must map str -> str; entries with other types: {shorten(map(str, bad))}"
        )
    return dict(metadata)


def _own_bytes(tensors: Mapping[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """Detached, contiguous CPU tensors, each with storage of its own (tied weights copied)."""
    import torch

    prepared: dict[str, torch.Tensor] = {}
    seen_storage: set[tuple[str, int]] = set()
    for name, t in tensors.items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"tensor names must be non-empty strings, got {name!r}")
        if name == METADATA_KEY:
            raise CheckpointError(f"{METADATA_KEY!r} is reserved and cannot be a tensor name")
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
    return prepared


def write_tensors(
    tensors: Mapping[str, "torch.Tensor"],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` to ``path`` as safetensors, atomically (temporary file + os.replace).

    Tensors are detached, made contiguous and moved to the CPU; tensors sharing storage
    (tied weights) are copied so each has its own bytes. Returns the final path.
    """
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
    meta = _checked_metadata(metadata)
    prepared = _own_bytes(tensors)

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


__all__ = ["torch_dtype", "read_tensors", "write_tensors"]
