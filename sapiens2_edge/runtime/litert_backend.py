"""LiteRT (TFLite) backend: runs ``model.tflite`` through ``ai_edge_litert``'s interpreter on the CPU
(its XNNPACK delegate). Torch-free: the interpreter is the only package it needs.

The graph has a fixed batch (``manifest.options["graph_batch"]``, 1 as exported: the converter
cannot lower this model with a symbolic batch), so a larger batch runs as that many invocations.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..artifact.paths import inside
from ..errors import ArtifactError, BackendUnavailableError
from .base import batch_input, check_input_size, load_errors, run_errors

INSTALL_HINT = "pip install 'sapiens2-edge[litert]'"


def import_litert():
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        raise BackendUnavailableError(f"the litert backend needs the LiteRT interpreter (ai-edge-litert): "
                                      f"{INSTALL_HINT}") from None
    return interpreter


def litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:
        return "?"


class LiteRTBackend:
    name = "litert"
    device = "cpu"

    def __init__(self, model_path: str | os.PathLike, max_batch: int | None = None, threads: int | None = None):
        interp = import_litert()
        self.path = Path(model_path)
        self.interpreter = interp.Interpreter(model_path=str(self.path), num_threads=threads or os.cpu_count() or 1)
        signatures = self.interpreter.get_signature_list()
        if len(signatures) != 1:
            raise ArtifactError(f"{self.path} has {len(signatures)} signatures; an artifact's model has one")
        self.runner = self.interpreter.get_signature_runner(next(iter(signatures)))
        inputs = self.runner.get_input_details()
        if len(inputs) != 1 or len(next(iter(inputs.values()))["shape"]) != 4:
            raise ArtifactError(f"{self.path} takes {len(inputs)} inputs of shape "
                                f"{[list(i['shape']) for i in inputs.values()]}; an artifact's model takes one "
                                "(B, 3, H, W) image batch")
        self.input_name, self.input = next(iter(inputs.items()))
        self.graph_batch = int(self.input["shape"][0])
        # the torch model's outputs in order: the converter names them output_0, output_1, ...
        self.output_names = sorted(self.runner.get_output_details(), key=_output_index)
        self.max_batch = max_batch

    @property
    def input_shape(self) -> list[int]:
        return [int(d) for d in self.input["shape"]]

    def describe(self) -> str:
        return f"litert {litert_version()} interpreter on CPU (graph batch {self.graph_batch})"

    def _invoke(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        out = self.runner(**{self.input_name: x})
        return tuple(np.array(out[name]) for name in self.output_names)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        x = batch_input(batch, self.max_batch)
        g = self.graph_batch
        parts = []
        with run_errors(self.path):
            for i in range(0, len(x), g):
                chunk = x[i:i + g]
                n = len(chunk)
                if n < g:  # the last images of a batch: pad to the graph's batch, keep the real ones
                    chunk = np.concatenate([chunk, np.zeros((g - n, *chunk.shape[1:]), np.float32)])
                parts.append(tuple(o[:n] for o in self._invoke(np.ascontiguousarray(chunk))))
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))


def _output_index(name: str) -> tuple[int, str]:
    tail = name.rsplit("_", 1)[-1]
    return (int(tail) if tail.isdigit() else 1 << 30, name)


def open_runner(root: Path, manifest, device: str, max_batch: int) -> LiteRTBackend:
    path = inside(root, manifest.require_file("model", root))
    if device not in ("auto", "cpu"):
        raise BackendUnavailableError(f"the litert backend runs on the CPU here (its interpreter), not {device!r}; "
                                      "pass device='cpu' (GPU/NPU delegates run on the phone)")
    with load_errors(path, "a LiteRT model"):
        backend = LiteRTBackend(path, max_batch=max_batch)
    check_input_size(path, backend.input_shape, manifest)
    if len(backend.output_names) != len(manifest.outputs):
        raise ArtifactError(f"{path} has {len(backend.output_names)} outputs but the manifest lists {manifest.outputs}; "
                            "re-export the artifact")
    return backend
