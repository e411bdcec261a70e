"""Checkpoint files in one import: the stable public names of the modules that handle them.

* :mod:`.safetensors_header`: the bounds-checked header parser (``read_header``,
  ``header_summary``, the dtype table); standard library only.
* :mod:`.safetensors_io`: tensor data (``read_tensors``, atomic ``write_tensors``); torch lazily.
* :mod:`.resolve`: a path, a directory, ``$SAPIENS_CHECKPOINT_ROOT`` or a Hugging Face id ->
  a local ``.safetensors`` file (``resolve_checkpoint``, ``official_filename``).
* :mod:`.layout`: key layouts (``strip_wrapper_prefixes``, ``split_layout``).

Nothing is ever unpickled: pickle-based files are refused by name, before they are opened.
"""

from __future__ import annotations

from .layout import BACKBONE_ROOTS, WRAPPER_PREFIXES, split_layout, strip_wrapper_prefixes
from .resolve import checkpoint_root, official_filename, resolve_checkpoint
from .safetensors_header import (
    MAX_HEADER_BYTES,
    PICKLE_SUFFIXES,
    SAFETENSORS_DTYPES,
    SafetensorsHeader,
    TensorInfo,
    header_summary,
    read_header,
)
from .safetensors_io import read_tensors, torch_dtype, write_tensors

# The name quantization.serialize imports (before torch_dtype was public).
_torch_dtype = torch_dtype

__all__ = [
    "SAFETENSORS_DTYPES",
    "MAX_HEADER_BYTES",
    "PICKLE_SUFFIXES",
    "TensorInfo",
    "SafetensorsHeader",
    "read_header",
    "read_tensors",
    "write_tensors",
    "torch_dtype",
    "strip_wrapper_prefixes",
    "split_layout",
    "resolve_checkpoint",
    "official_filename",
    "header_summary",
    "checkpoint_root",
    "BACKBONE_ROOTS",
    "WRAPPER_PREFIXES",
]
