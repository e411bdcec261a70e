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
from .safetensors_io import iter_tensors


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

    model, state = _model_holding(path, arch, head, rope_mode, bb_files, head_files)
    # a checkpoint from write_random_checkpoint says so in its metadata: its predictions are noise
    model.source, model.pretrained = str(path), not is_random_checkpoint(header.metadata)
    model = model.to(device)
    if dtype != torch.float32:
        model = model.to(dtype)
        model.backbone.rope_embed.periods.data = state["backbone.rope_embed.periods"].to(device, torch.bfloat16)
    return model.eval()


def _model_holding(path, arch, head, rope_mode: str, bb_files: dict, head_files: dict):
    """(model, state): the model built on the meta device (no random weights to make and throw away)
    holding the checkpoint's tensors as its parameters (:func:`assign_file_tensors`)."""
    with torch.device("meta"):
        model = Sapiens2Model(arch, head, rope_mode)
    names = {**{f"backbone.{k}": v for k, v in bb_files.items()}, **{f"decode_head.{k}": v for k, v in head_files.items()}}
    return model, assign_file_tensors(model, path, names)


def assign_file_tensors(model: torch.nn.Module, path, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """Give ``model`` (built on the meta device) the tensors of the safetensors file ``path`` as its
    parameters and buffers (``names``: state key -> tensor name in the file); returns the state.

    Each tensor is read from the file straight into its own torch allocation, one at a time, and
    becomes the parameter itself (``assign``): in the file's dtype where it is the parameter's, else
    cast and the read one dropped at once. The weights are held once plus one tensor: loading a 0.4b
    fp32 checkpoint held them twice before (the read tensors and initialised parameters: 3.3 GiB peak)."""
    wanted = {k: v.dtype for k, v in model.state_dict().items()}
    key_of = {v: k for k, v in names.items()}
    state = {}
    for name, t in iter_tensors(path, key_of):
        key = key_of[name]
        state[key] = t.to(wanted.get(key, t.dtype))  # the same tensor where the dtypes agree; unknown keys named below
        del t
    with torch.no_grad():
        model.load_state_dict(state, strict=True, assign=True)
    return state
