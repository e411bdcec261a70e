"""What every runtime backend provides."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..errors import InputSizeError


class Backend(Protocol):
    """Maps a normalised (B,3,H,W) float32 batch to the head's raw outputs as float32 arrays."""

    name: str
    device: str

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]: ...

    def describe(self) -> str:
        """One line saying what runs where (shown by the CLI and logged on creation)."""
        ...


def batch_input(batch: np.ndarray, max_batch: int | None) -> np.ndarray:
    """``batch`` as a contiguous float32 array, refused when larger than the artifact's ``max_batch``."""
    if max_batch is not None and len(batch) > max_batch:
        raise InputSizeError(f"a batch of {len(batch)} is larger than the {max_batch} this artifact was "
                             "exported for; split it (the Predictor does) or re-export with a larger max_batch")
    return np.ascontiguousarray(batch, dtype=np.float32)
