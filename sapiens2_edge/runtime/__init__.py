"""The runtime: :class:`Predictor` and one backend module per runtime.

A backend only maps a normalised (B,3,H,W) float32 batch to the head's raw outputs; all pre- and
post-processing lives in :mod:`sapiens2_edge.tasks`, shared by every backend. Torch-free except
:mod:`.torch_backend`, the bridge that runs checkpoints and torch artifacts.
"""

from .base import Backend
from .opener import BACKENDS, choose_backend, open_artifact
from .verify import verify_artifact

__all__ = ["BACKENDS", "Backend", "Predictor", "choose_backend", "open_artifact", "verify_artifact"]


def __getattr__(name: str):
    if name == "Predictor":
        from .predictor import Predictor

        return Predictor
    raise AttributeError(name)
