"""Randomly initialised models and checkpoints in the official layout, for trying the SDK without
weights: every stage (load, quantize, export, predict, bench) runs for real, only the predictions
are noise.

One code path for the demo (which builds such a model when no weights are on the machine) and
``sapiens2-edge init-random`` (which writes one as a checkpoint). A checkpoint written here
carries :data:`RANDOM_WEIGHTS_KEY` = ``"true"`` in its safetensors metadata, so whatever loads it
knows its predictions mean nothing (``model.pretrained`` stays False) and can say so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ConfigError, InputSizeError
from ..spec import DEFAULT_INPUT_SIZE, TASKS
from ..tasks.base import check_input_size
from .arch import ArchSpec, get_preset
from .layout import RANDOM_WEIGHTS_KEY, is_random_checkpoint  # noqa: F401 - re-exported
from .model import Sapiens2Model, build_model
from .safetensors_io import write_tensors

"""Safetensors metadata entry marking a checkpoint whose weights are random (value ``"true"``)."""
RANDOM_SEED_KEY = "sapiens2_edge.seed"

CHECKPOINT_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def random_model(arch: str | ArchSpec = "0.1b", task: str | None = None, *,
                 input_size: Sequence[int] | None = None, seed: int = 0) -> Sapiens2Model:
    """A model in the official layout with deterministic random weights (``seed``).

    ``arch``: a preset id (``0.1b``, ``0.4b``, ``0.8b``, ``1b``, ``5b``, ``1b-4k``) or an
    :class:`ArchSpec`; ``task``: pose, seg, normal, pointmap, albedo, or None (``"none"``) for a
    pretrain backbone. ``input_size`` (H, W) is what the pointmap head's scale branch is built for
    and the model's default input (default 1024x768). ``model.pretrained`` is False.
    """
    spec = get_preset(arch) if isinstance(arch, str) else arch
    if task == "none":
        task = None
    if task is not None and task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}, or none (a pretrain backbone)")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ConfigError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    h, w = check_input_size(input_size if input_size is not None else DEFAULT_INPUT_SIZE)
    m = spec.input_multiple
    if h % m or w % m:
        raise InputSizeError(f"input size {h}x{w} is not a multiple of {m} in both sides, as the "
                             f"{spec.name} backbone needs (e.g. 1024x768 or 512x384)")
    model = build_model(spec, task, input_size=(h, w), seed=seed)
    model.source = f"random {spec.name} {task or 'pretrain'} (seed {seed})"
    model.pretrained = False
    return model


def random_checkpoint_tensors(model: Sapiens2Model, dtype: str = "fp32") -> dict[str, torch.Tensor]:
    """The model's tensors under their official names, floats cast to ``dtype`` (fp32, bf16 or
    fp16); the RoPE periods buffer stays bf16, as in the released files."""
    if dtype not in CHECKPOINT_DTYPES:
        raise ConfigError(f"unknown checkpoint dtype {dtype!r}; expected one of {', '.join(CHECKPOINT_DTYPES)}")
    target = CHECKPOINT_DTYPES[dtype]
    return {k: (v if k.endswith("rope_embed.periods") else v.to(target)).contiguous()
            for k, v in model.official_state_dict().items()}


def write_random_checkpoint(path: str | os.PathLike, arch: str | ArchSpec = "0.1b", task: str | None = None, *,
                            input_size: Sequence[int] | None = None, seed: int = 0, dtype: str = "fp32",
                            overwrite: bool = False) -> Path:
    """Write a randomly initialised checkpoint in the official layout to ``path`` (``.safetensors``).

    The file loads with ``load_model`` like a released one (same keys and shapes) and its header
    metadata says the weights are random (:data:`RANDOM_WEIGHTS_KEY`), with the seed, arch, task
    and input size. Refuses to replace an existing file unless ``overwrite``. Returns the path.
    """
    p = Path(path).expanduser()
    if p.suffix.lower() != ".safetensors":
        raise ConfigError(f"the checkpoint path must end in .safetensors, got {str(p)!r}")
    if p.exists() and not overwrite:
        raise ConfigError(f"{p} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if dtype not in CHECKPOINT_DTYPES:  # before the (slow) build
        raise ConfigError(f"unknown checkpoint dtype {dtype!r}; expected one of {', '.join(CHECKPOINT_DTYPES)}")
    model = random_model(arch, task, input_size=input_size, seed=seed)
    metadata = {
        RANDOM_WEIGHTS_KEY: "true",
        RANDOM_SEED_KEY: str(seed),
        "sapiens2_edge.arch": model.arch.name,
        "sapiens2_edge.task": model.task or "none",
        "sapiens2_edge.input_size": "x".join(str(v) for v in model.input_size),
        "sapiens2_edge.dtype": dtype,
    }
    return write_tensors(random_checkpoint_tensors(model, dtype), p, metadata=metadata)




__all__ = ["RANDOM_WEIGHTS_KEY", "CHECKPOINT_DTYPES", "random_model", "random_checkpoint_tensors",
           "write_random_checkpoint", "is_random_checkpoint"]
