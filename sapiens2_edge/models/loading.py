"""``load_model`` for float checkpoints: official checkpoint (file, directory or Hugging Face id)
-> :class:`Sapiens2Model`. Quantized checkpoints are loaded by :func:`sapiens2_edge.load_model`,
which dispatches on the header (models never import quantization).

Strict by design: the header is checked against the shapes the inferred architecture expects
before a single weight is read, and any missing, unexpected or mis-shaped tensor is an error
naming it. Nothing is ever unpickled.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from ..errors import ConfigError, StateDictMismatchError, TaskMismatchError
from ..spec import check_task
from .arch import backbone_shapes, head_shapes
from .layout import (
    FLOAT_DTYPES,
    MAX_LISTED,
    check_shapes,
    describe_checkpoint,
    is_quantized_header,
    is_random_checkpoint,
)
from .model import Sapiens2Model
from .resolve import resolve_checkpoint
from .safetensors_header import read_header
from .safetensors_io import read_tensors


def load_model(source: str | os.PathLike, task: str | None = None, *, input_size: Sequence[int] | None = None,
               rope_mode: str = "bf16", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Sapiens2Model:
    """Load an official (float) Sapiens2 checkpoint.

    source: a ``.safetensors`` file, a directory holding one, or a Hugging Face id such as
    ``facebook/sapiens2-seg-0.4b`` (resolved through ``$SAPIENS_CHECKPOINT_ROOT`` and the Hugging
    Face cache). ``task``, when given, must match the checkpoint's head. ``input_size`` overrides the
    input a pointmap head was built for (inferred as the largest 4:3 size its scale MLP fits).
    A quantized checkpoint is refused with a :class:`ConfigError` pointing at
    :func:`sapiens2_edge.load_model`, which loads both kinds.
    """
    if task is not None:
        check_task(task)
    path = resolve_checkpoint(source)
    header = read_header(path)
    if is_quantized_header(header):
        raise ConfigError(f"{path} is a quantized checkpoint; sapiens2_edge.models.loading.load_model loads "
                          "float checkpoints only: use sapiens2_edge.load_model, which loads both")
    header, layout, arch, head, bb_files, head_files = describe_checkpoint(header, input_size)
    found_task = head.task if head else None
    if task is not None and task != found_task:
        what = f"a {found_task} checkpoint" if found_task else "a pretrain (backbone-only) checkpoint"
        raise TaskMismatchError(f"{path} is {what}, but task={task!r} was asked for")
    where = f"checkpoint {path}"
    check_shapes({k: header.tensors[v].shape for k, v in bb_files.items()}, backbone_shapes(arch), where,
                 "" if layout == "pretrain" else "backbone.")
    if head is not None:
        check_shapes({k: header.tensors[v].shape for k, v in head_files.items()},
                     head_shapes(head, arch.input_multiple), where, "decode_head.")
    bad = sorted(f"{v!r} ({header.tensors[v].dtype})" for v in (*bb_files.values(), *head_files.values())
                 if header.tensors[v].dtype not in FLOAT_DTYPES)
    if bad:
        raise StateDictMismatchError(f"{where}: expected F32, BF16 or F16 tensors, found {', '.join(bad[:MAX_LISTED])}")

    tensors = read_tensors(path)
    model = Sapiens2Model(arch, head, rope_mode)
    state = {f"backbone.{k}": tensors[v] for k, v in bb_files.items()}
    state.update({f"decode_head.{k}": tensors[v] for k, v in head_files.items()})
    with torch.no_grad():
        model.load_state_dict(state, strict=True)  # copies cast into fp32 params / the bf16 periods buffer
    # a checkpoint from write_random_checkpoint says so in its metadata: its predictions are noise
    model.source, model.pretrained = str(path), not is_random_checkpoint(header.metadata)
    model = model.to(device)
    if dtype != torch.float32:
        model = model.to(dtype)
        model.backbone.rope_embed.periods.data = state["backbone.rope_embed.periods"].to(device, torch.bfloat16)
    return model.eval()

