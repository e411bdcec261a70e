"""Held-out evaluation of a quantized model against its float reference (task-aware, see
:mod:`.fidelity`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..heap import reuse_freed_pages
from .calibration import CalibrationSet, build_calibration_set, progress
from .fidelity import task_fidelity

DEFAULT_EVAL_SAMPLES = 16


def as_batches(data: Any, task: str | None, input_size: Sequence[int], samples: int, batch_size: int = 4,
               show: bool | None = None) -> CalibrationSet:
    """Images / a folder / tensors -> preprocessed batches (the task's own pipeline); a ready
    :class:`CalibrationSet` is used as it is."""
    if isinstance(data, CalibrationSet):
        return data
    return build_calibration_set(data, task, tuple(input_size), samples, batch_size, show)


def run_outputs(model, batches: CalibrationSet, desc: str = "evaluate", show: bool | None = None) -> tuple[np.ndarray, ...]:
    """Raw outputs of ``model`` over all batches, concatenated per output."""
    parts = []
    with torch.inference_mode(), reuse_freed_pages(release=True):
        for b in progress(batches, len(batches), desc, show):
            out = model(b)
            parts.append(tuple(o.float().numpy() for o in (out if isinstance(out, tuple) else (out,))))
    return tuple(np.concatenate(p) for p in zip(*parts, strict=True))


def evaluate(float_model, qmodel, data: Any, *, input_size: Sequence[int] | None = None,
             samples: int = DEFAULT_EVAL_SAMPLES, batch_size: int = 4, show: bool | None = None,
             reference: tuple[np.ndarray, ...] | None = None, keypoints: Sequence[int] | None = None) -> dict[str, Any]:
    """Task fidelity of ``qmodel`` against ``float_model`` on up to ``samples`` held-out inputs.

    ``reference`` may hold the float outputs already computed for the same batches; ``keypoints``
    restricts the pose metrics to a subset of keypoints.
    """
    size = tuple(input_size or float_model.input_size)
    batches = as_batches(data, float_model.task, size, samples, batch_size, show)
    ref = reference if reference is not None else run_outputs(float_model, batches, "float", show)
    test = run_outputs(qmodel, batches, "quantized", show)
    result = task_fidelity(float_model.task, ref, test, size, keypoints=keypoints)
    result["samples"] = batches.num_samples
    return result
