"""Native backend: the C++ engine (``sapiens2_edge._native``: OpenBLAS GEMMs, OpenMP) on the CPU.

Needs no torch, onnxruntime or openvino. Runs artifacts that carry ``weights.safetensors``
(fp32, fp16-stored or int8-weight). One backend may be called from several threads at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, ConfigError
from .base import batch_input, load_errors


def import_native():
    """The extension module; preloads OpenBLAS from the scipy-openblas32 wheel when the
    extension's rpaths do not reach it (e.g. a relocated environment)."""
    # Idle OpenMP threads sleep instead of spinning: on a machine shared with other work (the
    # edge case) spinning threads were 2x slower; set OMP_WAIT_POLICY=active to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from .. import _native
    except ImportError as first:
        try:
            import ctypes

            import scipy_openblas32 as blas

            ctypes.CDLL(os.path.join(blas.get_lib_dir(), f"lib{blas.get_library()}.so"), mode=ctypes.RTLD_GLOBAL)
            from .. import _native
        except (ImportError, OSError):
            raise BackendUnavailableError(
                f"the native engine is not available ({first}); reinstall sapiens2-edge from source "
                "(pip install sapiens2-edge builds sapiens2_edge._native; it needs a C++17 compiler)") from None
    return _native


class NativeBackend:
    name = "native"
    device = "cpu"

    def __init__(self, path: str | os.PathLike, config: dict | None = None, max_batch: int | None = None):
        """``path``: an artifact directory or a weights ``.safetensors`` (``config``: manifest-like dict
        with ``arch``, ``head``, ``rope_mode``; default: the file's metadata)."""
        native = import_native()
        self.engine = native.Engine(str(Path(path)), json.dumps(config) if config is not None else "")
        self.max_batch = max_batch
        self.threads = native.num_threads()

    def describe(self) -> str:
        return (f"native C++ engine ({self.engine.weight_format} weights, OpenBLAS GEMM, "
                f"{self.threads} OpenMP threads) on the CPU")

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        return self.engine.run(batch_input(batch, self.max_batch))


def open_runner(root: Path, manifest, device: str, max_batch: int) -> NativeBackend:
    if device not in ("auto", "cpu"):
        raise ConfigError(f"the native engine runs on the CPU; device={device!r} is not available to it")
    with load_errors(root, "a native artifact"):
        return NativeBackend(root, max_batch=max_batch)
