"""The runtime: :class:`Predictor` and one backend module per runtime.

A backend only maps a normalised (B,3,H,W) float32 batch to the head's raw outputs; all pre- and
post-processing lives in :mod:`sapiens2_edge.tasks`, shared by every backend.
"""

from .base import BACKENDS, Backend

__all__ = ["BACKENDS", "Backend", "Predictor"]


def __getattr__(name: str):
    if name == "Predictor":
        from .predictor import Predictor

        return Predictor
    raise AttributeError(name)
