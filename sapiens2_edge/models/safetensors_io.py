"""Safetensors tensor data: reading (after the header is validated) and atomic writing.

Nothing is ever unpickled: data is read through ``safetensors.safe_open`` only, once
:func:`~.safetensors_header.read_header` has validated the whole header. ``torch`` is imported
inside the functions, so importing this module needs no torch.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

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
