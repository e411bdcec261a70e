"""``sapiens2_edge.load_model``: any checkpoint, float or quantized, to a torch model.

The header says which: a quantized checkpoint (int8 / fp8 tensors, scales and the recipe in its
metadata) is rebuilt bit-exactly by the quantization loader, anything else is an official float
checkpoint for :mod:`sapiens2_edge.models.loading`. This is the one place that knows both; the
models layer never imports quantization.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

from .errors import BackendUnavailableError
from .models.layout import is_quantized_header
from .models.resolve import resolve_checkpoint
from .models.safetensors_header import read_header
from .spec import check_task

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .models.model import Sapiens2Model


def load_model(source: str | os.PathLike, task: str | None = None, *, input_size: Sequence[int] | None = None,
               rope_mode: str = "bf16", device: "str | torch.device" = "cpu",
               dtype: "torch.dtype | None" = None) -> "Sapiens2Model":
    """Load a Sapiens2 checkpoint: an official float one or one written by ``save_quantized``.

    source: a ``.safetensors`` file, a directory holding one, or a Hugging Face id such as
    ``facebook/sapiens2-seg-0.4b`` (resolved through ``$SAPIENS_CHECKPOINT_ROOT`` and the Hugging
    Face cache). ``task``, when given, must match the checkpoint's head. ``input_size`` overrides the
    input a float pointmap head was built for (a quantized checkpoint keeps the size it was saved
    with). ``dtype`` is the dtype of the float parameters (default float32); quantized weights and
    their scales stay as stored. A quantized checkpoint comes back as a ``QuantizedModel``.
    Needs PyTorch (the ``torch`` extra); without it a :class:`BackendUnavailableError` says so.
    """
    torch = _torch()
    dtype = torch.float32 if dtype is None else dtype
    if task is not None:
        check_task(task)
    path = resolve_checkpoint(source)
    if is_quantized_header(read_header(path)):
        from .quantization.serialize import load_quantized

        return load_quantized(path, task, rope_mode=rope_mode, device=device, dtype=dtype)
    from .models.loading import load_model as load_float_model

    return load_float_model(path, task, input_size=input_size, rope_mode=rope_mode, device=device, dtype=dtype)


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError('load_model builds a PyTorch model and needs torch, which is not installed: '
                                      'pip install "sapiens2-edge[torch]" (an exported artifact runs without it: '
                                      's2e.Predictor(artifact_dir))') from None
    return torch


__all__ = ["load_model"]
