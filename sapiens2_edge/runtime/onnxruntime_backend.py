"""ONNX Runtime backend: CPU, CUDA or TensorRT execution providers, whichever are installed.

It opens ONNX models and ORT-format models (``.ort``, the ``ort`` mobile format) alike."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..artifact.paths import inside
from ..errors import ArtifactError, BackendUnavailableError
from ..heap import release_freed_heap
from .base import batch_input, check_input_size, load_errors, run_errors

# Preference order when the caller does not choose.
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError(
            "the onnxruntime backend needs ONNX Runtime: pip install 'sapiens2-edge[onnx]' "
            "(or onnxruntime-gpu for CUDA/TensorRT)") from None
    return onnxruntime


def session_options(threads: int | None = None):
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # ORT's memory pattern plans one block for every intermediate of a run from the first run's
    # sizes; without it the arena reuses freed blocks: 0.1b int8 at 512x384 peaks at 672 MB instead
    # of 877 MB at the same speed (benchmarks/results/cpu_peers.md)
    opts.enable_mem_pattern = False
    # ORT turns weight-only DequantizeLinear -> MatMul into MatMulNBits (int8 weights kept in memory)
    # and by default also quantizes its activations (accuracy level 4); an int8-weight artifact
    # promises float activations, so compute in fp32 (level 1) there.
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return opts


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model_path: str | os.PathLike, providers: Sequence[str] | None = None,
                 threads: int | None = None, max_batch: int | None = None, optimized_path: str | None = None):
        ort = import_ort()
        available = ort.get_available_providers()
        chosen = [p for p in (providers or PROVIDER_ORDER) if p in available]
        if not chosen:
            raise BackendUnavailableError(f"none of the execution providers {list(providers or PROVIDER_ORDER)} "
                                          f"is available; this onnxruntime offers {available}")
        opts = session_options(threads)
        if optimized_path is not None:  # where ORT saves the graph it runs (to check which kernels it picked)
            opts.optimized_model_filepath = str(optimized_path)
        if Path(model_path).suffix == ".ort":
            # an ORT-format model was optimized when it was exported (for ARM); run it as saved, as a
            # minimal mobile build does, so what is verified here is the graph the device runs
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.path = Path(model_path)
        self.session = ort.InferenceSession(str(Path(model_path)), sess_options=opts,
                                            providers=chosen)
        release_freed_heap()  # the weights' parsed copies, freed once prepacked (see sapiens2_edge.heap)
        self.providers = self.session.get_providers()
        self.device = "cuda" if self.providers[0] != "CPUExecutionProvider" else "cpu"
        self.input_name = self.session.get_inputs()[0].name
        self.max_batch = max_batch

    def describe(self) -> str:
        ort = import_ort()
        return f"onnxruntime {ort.__version__} with {', '.join(self.providers)}"

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        x = batch_input(batch, self.max_batch)
        with run_errors(self.path):
            return tuple(self.session.run(None, {self.input_name: x}))


def open_runner(root: Path, manifest, device: str, max_batch: int) -> OnnxRuntimeBackend:
    providers = ["CPUExecutionProvider"] if device == "cpu" else list(PROVIDER_ORDER)
    path = inside(root, manifest.require_file("model", root))
    with load_errors(path, "an ONNX model"):
        backend = OnnxRuntimeBackend(path, providers=providers, max_batch=max_batch)
        inputs = backend.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ArtifactError(f"{path} takes {len(inputs)} inputs of shape "
                                f"{[i.shape for i in inputs]}; an artifact's model takes one (B, 3, H, W) image batch")
    check_input_size(path, inputs[0].shape, manifest)
    return backend
