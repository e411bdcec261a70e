"""Held-out evaluation of a quantized model against its float reference (task-aware, see
:mod:`.fidelity`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..heap import reuse_freed_pages
from .calibration import CalibrationSet, build_calibration_set, progress
from .enough import EnoughImages, reading_order
from .fidelity import FidelityAccumulator
from .measure import numpy_outputs

DEFAULT_EVAL_SAMPLES = 16


def as_batches(data: Any, task: str | None, input_size: Sequence[int], samples: int, batch_size: int = 4,
               show: bool | None = None) -> CalibrationSet:
    """Images / a folder / tensors -> preprocessed batches (the task's own pipeline); a ready
    :class:`CalibrationSet` is used as it is."""
    if isinstance(data, CalibrationSet):
        return data
    return build_calibration_set(data, task, tuple(input_size), samples, batch_size, show)


def shuffled(batches: CalibrationSet, batch_size: int | None = None) -> CalibrationSet:
    """The same inputs in :func:`.enough.reading_order` (re-batched to ``batch_size``, default the
    first batch's): an evaluation that may stop early reads a sample of the whole set first."""
    samples = [b[i:i + 1] for b in batches for i in range(b.shape[0])]
    size = batch_size or (batches.batches[0].shape[0] if len(batches) else 1)
    order = [samples[i] for i in reading_order(len(samples))]
    return CalibrationSet([torch.cat(order[i:i + size]) for i in range(0, len(order), size)], batches.input_size,
                          batches.source)


def run_outputs(model, batches: CalibrationSet, desc: str = "evaluate", show: bool | None = None) -> tuple[np.ndarray, ...]:
    """Raw outputs of ``model`` over all batches, concatenated per output."""
    parts = []
    with torch.inference_mode(), reuse_freed_pages(release=True):
        for b in progress(batches, len(batches), desc, show):
            parts.append(numpy_outputs(model(b)))
    return tuple(np.concatenate(p) for p in zip(*parts, strict=True))


def evaluate(float_model, qmodel, data: Any, *, input_size: Sequence[int] | None = None,
             samples: int = DEFAULT_EVAL_SAMPLES, batch_size: int = 4, show: bool | None = None,
             reference: tuple[np.ndarray, ...] | None = None, keypoints: Sequence[int] | None = None,
             min_samples: int | None = None) -> dict[str, Any]:
    """Task fidelity of ``qmodel`` against ``float_model`` on up to ``samples`` held-out inputs, one
    float and one quantized forward per batch.

    ``reference`` may hold the float outputs already computed for the same batches; ``keypoints``
    restricts the pose metrics to a subset of keypoints. ``min_samples``: stop after at least that
    many inputs once the task's headline metric is known to its 95 % interval (:mod:`.enough`; the
    inputs are then read in a fixed shuffled order); None (or a ``reference``) reads them all.
    """
    size = tuple(input_size or float_model.input_size)
    batches = as_batches(data, float_model.task, size, samples, batch_size, show)
    fidelity = FidelityAccumulator(float_model.task, size, keypoints)
    enough = EnoughImages(fidelity, None if reference is not None else min_samples, batches.num_samples)
    if enough.early:
        batches = shuffled(batches)
    read, desc = 0, f"evaluate ({'up to ' if enough.early else ''}{batches.num_samples} held-out)"
    with torch.inference_mode(), reuse_freed_pages(release=True):
        for b in progress(batches, len(batches), desc, show):
            ref = (tuple(r[read:read + b.shape[0]] for r in reference) if reference is not None
                   else numpy_outputs(float_model(b)))
            fidelity.add(ref, numpy_outputs(qmodel(b)))
            read += b.shape[0]
            if enough(read):
                break
    return {**fidelity.result(), **enough.summary()}
