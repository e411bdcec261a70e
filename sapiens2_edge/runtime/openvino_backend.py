"""OpenVINO backend: runs an OpenVINO IR (``openvino/model.xml``) or an ONNX file on the CPU (or any
device OpenVINO offers)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..artifact.paths import inside
from ..errors import ArtifactError, BackendUnavailableError
from .base import batch_input, check_input_size, load_errors, run_errors


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailableError("the openvino backend needs OpenVINO: pip install 'sapiens2-edge[openvino]'") from None
    return openvino


class OpenVINOBackend:
    name = "openvino"

    def __init__(self, model_path: str | os.PathLike, device: str = "CPU", max_batch: int | None = None,
                 threads: int | None = None, inference_precision: str = "f32"):
        ov = import_openvino()
        core = ov.Core()
        # OpenVINO's CPU plugin silently runs in bf16 on CPUs that have it; an fp32 artifact must not.
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": inference_precision}
        # Its CPU plugin also quantizes the activations of int8-weight MatMuls on the fly (groups of
        # 32); an artifact's quantization is in its graph (int8 kernels come from its FakeQuantize).
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.path = Path(model_path)
        self.compiled = core.compile_model(str(Path(model_path)), device, config)
        self.request = self.compiled.create_infer_request()
        self.device = device.lower()
        self.max_batch = max_batch
        self.version = ov.__version__

    def describe(self) -> str:
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        precision = precision.get_type_name() if hasattr(precision, "get_type_name") else precision  # "f32"
        return f"openvino {self.version} on {self.device.upper()} ({precision})"

    def matmul_precisions(self) -> dict[str, int]:
        """{"FullyConnected i8": n, ...}: the precision each compiled GEMM/conv actually runs in."""
        counts: dict[str, int] = {}
        for node in self.compiled.get_runtime_model().get_ordered_ops():
            info = node.get_rt_info()
            kind = info["layerType"].astype(str) if "layerType" in info else node.get_type_name()
            if kind in ("FullyConnected", "MatMul", "Convolution", "Deconvolution"):
                key = f"{kind} {info['runtimePrecision'].astype(str)}"
                counts[key] = counts.get(key, 0) + 1
        return counts

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        x = batch_input(batch, self.max_batch)
        with run_errors(self.path):
            result = self.request.infer({0: x})
            return tuple(np.array(result[out]) for out in self.compiled.outputs)


def open_runner(root: Path, manifest, device: str, max_batch: int) -> OpenVINOBackend:
    path = inside(root, manifest.require_file("model", root))
    if path.suffix == ".xml":  # the IR's weights: the .bin beside it, which OpenVINO reads by that name
        inside(root, str(Path(manifest.require_file("model", root)).with_suffix(".bin")))
    with load_errors(path, "an OpenVINO model"):
        backend = OpenVINOBackend(path, device="CPU" if device in ("auto", "cpu") else device.upper(),
                                  max_batch=max_batch)
        inputs = backend.compiled.inputs
        if len(inputs) != 1 or inputs[0].get_partial_shape().rank.get_length() != 4:
            raise ArtifactError(f"{path} does not take one (B, 3, H, W) image batch")
        dims = [d.get_length() if d.is_static else None for d in inputs[0].get_partial_shape()]
    check_input_size(path, dims, manifest)
    return backend
