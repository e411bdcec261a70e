"""Detector checkpoints: the one-time conversion of the official mmdet ``.pth`` (a torch zip pickle)
to safetensors, and ``load_detector``, which reads safetensors only.

The ``.pth`` is read by :func:`convert_checkpoint` alone, through torch's restricted unpickler
(``torch.load(weights_only=True)``): it rebuilds tensors and plain containers and calls nothing
else. mmdet checkpoints also carry metadata (``meta``, ``message_hub``) that may hold numpy or
mmengine objects, which that unpickler refuses by default; such globals, from a short list of
known metadata modules, are mapped to an inert placeholder class (never the real class or
function), and any other global (``os.system``, ``builtins.eval``, ...) makes the conversion fail,
naming it, before anything is unpickled.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError, CheckpointNotFoundError, ConfigError, StateDictMismatchError
from ..models.layout import check_shapes, strip_wrapper_prefixes
from ..models.resolve import resolve_checkpoint
from ..models.safetensors_header import PICKLE_SUFFIXES, read_header, shorten
from ..models.safetensors_io import read_tensors, write_tensors
from .config import DETECTOR_METADATA_KEY, DETECTOR_NAME, RTMDetConfig
from .head import shared_conv_keys
from .model import RTMDet, expected_shapes

#: Modules whose objects may appear in an mmdet checkpoint's metadata; they become placeholders.
METADATA_MODULES = ("numpy.", "mmengine.", "mmdet.", "mmcv.", "mmpose.", "collections.")
_FLOAT_DTYPES = {"F32", "F16", "BF16"}


class _Placeholder:
    """Stands for a metadata object of the checkpoint; built from nothing, holds nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Placeholder":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _restricted_load(path: Path) -> Any:
    zipped = zipfile.is_zipfile(path)
    names: list[str] = []
    if zipped:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as e:  # noqa: BLE001 - torch raises several kinds for a broken archive
            raise CheckpointError(f"{str(path)!r} is not a readable torch checkpoint: {e}") from None
        refused = [n for n in names if not n.startswith(METADATA_MODULES)]
        if refused:
            raise CheckpointError(
                f"{str(path)!r} refers to {shorten(refused)}, which is neither a tensor nor checkpoint "
                "metadata; refusing to read it (unpickling such a file can run code). Expected an "
                "mmdet checkpoint holding a state_dict of tensors")
    try:
        with torch.serialization.safe_globals([(_Placeholder, n) for n in names]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError, AttributeError) as e:
        raise CheckpointError(
            f"{str(path)!r} could not be read with the restricted unpickler (weights_only=True): {e}") from None


def _state_dict_of(obj: Any, where: str) -> dict[str, torch.Tensor]:
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"{where} holds no state dict (expected a mapping of name -> tensor, at the top level "
                              f"or under 'state_dict'; found {type(sd).__name__})")
    bad = [str(k) for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{where}: state dict entries that are not tensors: {shorten(bad)}")
    return strip_wrapper_prefixes(dict(sd))


def _expected() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: no memory, no random init
        return expected_shapes(RTMDet())


def _check_state(shapes: Mapping[str, tuple], dtypes: Mapping[str, str], where: str) -> None:
    check_shapes(shapes, _expected(), where)
    wrong = [f"{k} ({d})" for k, d in dtypes.items()
             if d not in ({"I64"} if k.endswith("num_batches_tracked") else _FLOAT_DTYPES)]
    if wrong:
        raise StateDictMismatchError(f"{where}: expected F32, F16 or BF16 weights and I64 batch counters, "
                                     f"found {', '.join(wrong[:8])}")


def _check_shared(state: Mapping[str, torch.Tensor], where: str) -> None:
    differ = [k for k, first in shared_conv_keys(RTMDetConfig()).items() if not torch.equal(state[k], state[first])]
    if differ:
        raise StateDictMismatchError(
            f"{where}: RTMDet-m shares its head convs across levels, but {shorten(differ)} differ from the "
            "level-0 copies; expected identical tensors (a checkpoint of a head without shared convs?)")


_SAFETENSORS_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}


def convert_checkpoint(source: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert the official RTMDet-m ``.pth`` (or any torch-saved state dict of it) to safetensors.

    The state dict is taken from ``"state_dict"`` or the top level, checked strictly against
    RTMDet-m (every missing, unexpected or mis-shaped tensor is named) and written with metadata
    naming the detector. Returns the written path.
    """
    src, dst = Path(source).expanduser(), Path(output).expanduser()
    if not src.is_file():
        raise CheckpointNotFoundError(f"no checkpoint file at {str(src)!r} (expected the official detector "
                                      "'detector/rtmdet_m.pth' or a torch-saved RTMDet-m state dict)")
    if dst.suffix.lower() != ".safetensors":
        raise ConfigError(f"the output must be a .safetensors file, got {str(dst)!r}")
    if dst.exists() and not overwrite:
        raise ConfigError(f"{str(dst)!r} already exists; pass overwrite=True (--overwrite) to replace it")
    where = f"checkpoint {str(src)!r}"
    state = _state_dict_of(_restricted_load(src), where)
    _check_state({k: tuple(v.shape) for k, v in state.items()},
                 {k: _SAFETENSORS_DTYPE.get(v.dtype, str(v.dtype)) for k, v in state.items()}, where)
    _check_shared(state, where)
    return write_tensors(state, dst, metadata={DETECTOR_METADATA_KEY: DETECTOR_NAME, "format": "pt",
                                               "converted_from": src.name})


def load_detector(source: str | os.PathLike, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> RTMDet:
    """Load the RTMDet-m person detector from a safetensors file (written by ``convert``), strictly:
    every missing, unexpected or mis-shaped tensor is an error naming it. Pickle files are refused
    (convert them once with ``sapiens2-edge convert IN.pth OUT.safetensors``)."""
    p = Path(source).expanduser() if isinstance(source, (str, os.PathLike)) else source
    if isinstance(p, Path) and p.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{str(p)!r} is a pickle-based checkpoint, which is never loaded (unpickling can run code); convert "
            f"it once with: sapiens2-edge convert {p} {p.with_suffix('.safetensors')}")
    path = resolve_checkpoint(source)
    header = read_header(path)
    where = f"detector checkpoint {str(path)!r}"
    _check_state({k: v.shape for k, v in header.tensors.items()}, {k: v.dtype for k, v in header.tensors.items()},
                 where)
    state = read_tensors(path)
    _check_shared(state, where)
    model = RTMDet()
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    model.source, model.pretrained = str(path), True
    return model.to(device=device, dtype=dtype).eval()


__all__ = ["convert_checkpoint", "load_detector", "METADATA_MODULES"]
