"""Core ML backend: runs a ``model.mlpackage`` with coremltools. Prediction needs macOS (the Core ML
framework); on any other system opening one raises :class:`BackendUnavailableError`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ..artifact.paths import inside
from ..errors import BackendUnavailableError, ConfigError
from .base import batch_input, load_errors

INPUT_NAME = "image"  # as written by sapiens2_edge.exporters.coreml_export


def require_macos(what: str = "Core ML prediction") -> None:
    if sys.platform != "darwin":
        raise BackendUnavailableError(
            f"{what} needs macOS (the Core ML framework); this machine runs {sys.platform}. Run the .mlpackage "
            "on a Mac or an iOS device, or export an onnx, openvino or torch artifact for this machine")


def import_coremltools():
    try:
        import coremltools
    except ImportError:
        raise BackendUnavailableError("the coreml backend needs coremltools: pip install 'sapiens2-edge[coreml]'") \
            from None
    return coremltools


class CoreMLBackend:
    name = "coreml"

    def __init__(self, package: str | os.PathLike, outputs: list[str] | None = None, device: str = "auto",
                 max_batch: int | None = None):
        require_macos()
        ct = import_coremltools()
        units = {"auto": ct.ComputeUnit.ALL, "cpu": ct.ComputeUnit.CPU_ONLY, "gpu": ct.ComputeUnit.CPU_AND_GPU,
                 "ane": ct.ComputeUnit.CPU_AND_NE}
        if device not in units:
            raise ConfigError(f"invalid Core ML device {device!r}; expected one of {', '.join(units)}")
        self.device = device
        self.model = ct.models.MLModel(str(Path(package)), compute_units=units[device])
        self.outputs = outputs or [o.name for o in self.model.get_spec().description.output]
        self.max_batch = max_batch

    def describe(self) -> str:
        ct = import_coremltools()
        return f"coremltools {ct.__version__} Core ML ML Program, compute units {self.device}"

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        out = self.model.predict({INPUT_NAME: batch_input(batch, self.max_batch)})
        return tuple(np.asarray(out[n], dtype=np.float32) for n in self.outputs)


def open_runner(root: Path, manifest, device: str, max_batch: int) -> CoreMLBackend:
    require_macos()
    package = inside(root, manifest.require_file("model", root)).parent  # the "model" file: the package's Manifest.json
    with load_errors(package, "a Core ML package"):
        return CoreMLBackend(package, outputs=list(manifest.outputs), device=device, max_batch=max_batch)
