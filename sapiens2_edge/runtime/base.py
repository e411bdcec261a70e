"""What every runtime backend provides."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    """Maps a normalised (B,3,H,W) float32 batch to the head's raw outputs as float32 arrays."""

    name: str
    device: str

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]: ...

    def describe(self) -> str:
        """One line saying what runs where (shown by the CLI and logged on creation)."""
        ...
