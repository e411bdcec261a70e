"""What every runtime backend provides."""

from __future__ import annotations

import contextlib
from typing import Iterator, Protocol, Sequence

import numpy as np

from ..errors import ArtifactError, InputSizeError, Sapiens2EdgeError


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


@contextlib.contextmanager
def _typed(what: str) -> Iterator[None]:
    try:
        yield
    except Sapiens2EdgeError:
        raise
    except Exception as e:  # noqa: BLE001 - ONNX Runtime, OpenVINO and torch raise their own types
        text = " ".join(str(e).split())[:300] or type(e).__name__
        raise ArtifactError(f"{what}: {type(e).__name__}: {text}; the file is corrupt or not what the manifest "
                            "says - re-export the artifact") from None


def load_errors(path, what: str):
    """Turn whatever a runtime library raises while loading ``path`` (a corrupt or foreign file)
    into an ArtifactError naming it; the SDK's own typed errors pass through."""
    return _typed(f"cannot load {path} as {what}")


def run_errors(path):
    """As :func:`load_errors`, for running a loaded model (a graph that loads but cannot run)."""
    return _typed(f"running the model {path} failed")


def check_input_size(path, dims: Sequence, manifest) -> None:
    """The (H, W) a graph takes (``dims``: its input's last two dimensions; symbolic ones skipped)
    matches the manifest's ``input_size``."""
    want = list(manifest.input_size)
    for got, expected, side in zip(list(dims)[-2:], want, ("height", "width"), strict=True):
        if isinstance(got, int) and got != expected:
            raise ArtifactError(f"{path} takes inputs of {side} {got}, but the manifest says input_size {want}: the "
                                "manifest does not belong to this model; re-export the artifact")
