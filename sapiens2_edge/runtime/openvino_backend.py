"""OpenVINO backend: runs an OpenVINO IR (``openvino/model.xml``) or an ONNX file on the CPU (or any
device OpenVINO offers).

Inference precision (what OpenVINO computes the float parts of a graph in) follows the artifact's
policy, ``manifest.options["inference_precision"]`` (written at export, see
:func:`precision_policy`):

* ``{"mode": "f32"}`` (fp32 and fp16 artifacts): ``INFERENCE_PRECISION_HINT=f32`` and
  ``EXECUTION_MODE_HINT=ACCURACY``. Without the hint OpenVINO's CPU plugin computes float graphs
  in bf16 wherever the CPU has native bf16 (avx512_bf16 or AMX), which an fp32 artifact must not;
  the accuracy mode also keeps its other lossy options off (dynamic quantization of activations).
* ``{"mode": "bf16"}`` (bf16 artifacts): bf16 where the CPU has native bf16, else f32 (OpenVINO
  would emulate bf16 slowly, or ignore the hint).
* ``{"mode": "auto", "verified": [...]}`` (quantized artifacts: what stays float - attention,
  norms, the head - around the int8 layers): bf16 where the CPU has native bf16 and the export
  verified bf16, else f32.

Artifacts without a policy (older exports) run as they were verified: f32.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..artifact.paths import inside
from ..cpu_features import bf16_flags, int8_dot_products
from ..errors import ArtifactError, BackendUnavailableError, ConfigError
from .base import batch_input, check_input_size, load_errors, run_errors
from .page_release import PageReleaser, release_mapped_file

F32, BF16 = "f32", "bf16"
#: artifact precision -> policy mode
_MODES = {"fp32": F32, "fp16": F32, "bf16": BF16}


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailableError("the openvino backend needs OpenVINO: pip install 'sapiens2-edge[openvino]'") from None
    return openvino


def native_bf16(cpuinfo: str | None = None) -> tuple[bool, str]:
    """(whether this CPU computes bf16 natively, the evidence): its avx512_bf16 / amx_bf16 flags in
    ``cpuinfo`` (default: /proc/cpuinfo), or where there is none, whether OpenVINO lists BF16 among
    the CPU's capabilities."""
    has, evidence = bf16_flags(cpuinfo)
    if has is not None:
        return has, evidence
    caps = import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return ("BF16" in caps, f"OpenVINO's CPU capabilities {'include' if 'BF16' in caps else 'lack'} BF16")


def precision_policy(precision: str, fidelity: dict[str, dict] | None = None) -> dict:
    """The manifest's ``inference_precision`` entry for an artifact of ``precision``; ``fidelity``
    (quantized artifacts): {inference precision: its check at export, with ``passed``}."""
    if precision in _MODES:
        return {"mode": _MODES[precision]}
    verified = sorted(k for k, v in (fidelity or {}).items() if v.get("passed")) if fidelity else [F32]
    return {"mode": "auto", "verified": verified, "rule": "bf16 on CPUs with native bf16 (avx512_bf16 or AMX), "
            "else f32", **({"fidelity": fidelity} if fidelity else {})}


def resolve_precision(policy: dict | None, precision: str, native: tuple[bool, str] | None = None
                      ) -> tuple[str, str | None, str]:
    """(INFERENCE_PRECISION_HINT, EXECUTION_MODE_HINT or None, why) for an artifact of ``precision``
    with manifest policy ``policy`` on this CPU (``native``: :func:`native_bf16`, found if None)."""
    if policy is None:  # exported before the policy was recorded: run as verified then
        if precision in ("fp32", "fp16"):
            return F32, "ACCURACY", f"{precision} artifact: f32 in accuracy mode"
        return F32, None, "the artifact records no inference precision; f32, as it was verified"
    mode = policy.get("mode") if isinstance(policy, dict) else None
    if mode == F32:
        return F32, "ACCURACY", f"{precision} artifact: f32 in accuracy mode"
    if mode not in (BF16, "auto"):
        raise ConfigError(f"the artifact's inference_precision policy {policy!r} is not one this SDK knows; "
                          "expected mode 'f32', 'bf16' or 'auto' (re-export it, or upgrade sapiens2-edge)")
    has, evidence = native if native is not None else native_bf16()
    if mode == "auto" and BF16 not in policy.get("verified", ()):
        return F32, None, "the export verified f32 only"
    what = "the artifact's precision" if mode == BF16 else "what the int8 artifact keeps in float"
    if has:
        return BF16, None, f"{what} in bf16: {evidence}"
    return F32, None, f"{what} in f32: {evidence}"


class OpenVINOBackend:
    name = "openvino"

    def __init__(self, model_path: str | os.PathLike, device: str = "CPU", max_batch: int | None = None,
                 threads: int | None = None, inference_precision: str = F32, execution_mode: str | None = "ACCURACY",
                 reason: str = "", verified_as: str | None = None):
        ov = import_openvino()
        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": inference_precision}
        if execution_mode:
            config["EXECUTION_MODE_HINT"] = execution_mode
        # Its CPU plugin also quantizes the activations of int8-weight MatMuls on the fly (groups of
        # 32); an artifact's quantization is in its graph (int8 kernels come from its FakeQuantize).
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.path = Path(model_path)
        weights = Path(model_path).with_suffix(".bin")
        # its CPU plugin computes from repacked weights: the mapped file's pages are a second copy,
        # given back while it compiles and once it is done
        with PageReleaser(weights):
            self.compiled = core.compile_model(str(Path(model_path)), device, config)
        self.released_bytes = release_mapped_file(weights)
        self.request = self.compiled.create_infer_request()
        self._layouts = self._output_layouts()
        self.device = device.lower()
        self.max_batch = max_batch
        self.version = ov.__version__
        self._ov = ov
        self.reason = reason
        self._args = (model_path, device, max_batch, threads)
        self.verified_as = verified_as  # the precision its stored reference was checked in, if it differs

    def as_verified(self) -> "OpenVINOBackend":
        """This model compiled as its stored reference was checked. A quantized artifact's reference
        is the torch QuantizedModel's, checked with float ops in f32; bf16 float ops move it away
        from that (its bf16 check at export is against the float model, see the exporter)."""
        if self.verified_as in (None, self.inference_precision):
            return self
        path, device, max_batch, threads = self._args
        return OpenVINOBackend(path, device, max_batch, threads, self.verified_as, None, "as verified at export")

    @property
    def inference_precision(self) -> str:
        """What the compiled model computes float ops in (``f32``/``bf16``), as OpenVINO reports it."""
        return _type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))

    def describe(self) -> str:
        mode = str(self.compiled.get_property("EXECUTION_MODE_HINT")).rsplit(".", 1)[-1]
        why = f": {self.reason}" if self.reason else ""
        return f"openvino {self.version} on {self.device.upper()} ({self.inference_precision}, {mode.lower()} mode{why})"

    def matmul_precisions(self) -> dict[str, int]:
        """{"FullyConnected i8": n, ...}: the precision each compiled GEMM/conv runs in. A layer whose
        runtime precision is int8 is counted as int8 only when its kernel is (the primitive type's
        suffix, e.g. brgemm_avx512_amx_i8): OpenVINO also reports u8 for int8 weights it decompresses
        into a bf16/f32 GEMM, which is then counted as that float precision. Weight-only u4 layers keep
        their u4."""
        counts: dict[str, int] = {}
        for node in self.compiled.get_runtime_model().get_ordered_ops():
            info = node.get_rt_info()
            kind = info["layerType"].astype(str) if "layerType" in info else node.get_type_name()
            if kind in ("FullyConnected", "MatMul", "Convolution", "Deconvolution"):
                runtime = info["runtimePrecision"].astype(str)
                kernel = info["primitiveType"].astype(str) if "primitiveType" in info else ""
                suffix = kernel.rsplit("_", 1)[-1].lower() if "_" in kernel else ""
                int8_layer = runtime.lower() in ("i8", "u8")
                key = f"{kind} {suffix if int8_layer and suffix and suffix not in ('i8', 'u8') else runtime}"
                counts[key] = counts.get(key, 0) + 1
        return counts

    def _output_layouts(self) -> list[tuple[list[int], np.dtype]] | None:
        """(dims after the batch, dtype) of each output, known before running; None where some output's
        shape is only known after running (its results are then copied)."""
        layouts = []
        for out in self.compiled.outputs:
            shape = out.get_partial_shape()
            if shape.rank.is_dynamic or len(shape) == 0 or not all(d.is_static for d in list(shape)[1:]):
                return None
            try:
                dtype = np.dtype(out.get_element_type().to_dtype())
            except (TypeError, RuntimeError):
                return None
            layouts.append(([d.get_length() for d in list(shape)[1:]], dtype))
        return layouts

    def _fresh_outputs(self, batch: int) -> list[np.ndarray] | None:
        """New arrays for this call's outputs, for OpenVINO to write into (no copy of a result
        afterwards, and a caller's earlier result is never overwritten); None where an output's
        shape is not known before running."""
        if self._layouts is None:
            return None
        return [np.empty([batch, *dims], dtype) for dims, dtype in self._layouts]

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        x = batch_input(batch, self.max_batch)
        with run_errors(self.path):
            arrays = self._fresh_outputs(len(x))
            if arrays is None:
                result = self.request.infer({0: x})
                return tuple(np.array(result[out]) for out in self.compiled.outputs)
            for i, a in enumerate(arrays):
                self.request.set_output_tensor(i, self._ov.Tensor(a, shared_memory=True))
            self.request.infer({0: x})
            return tuple(arrays)


def _type_name(t) -> str:
    """OpenVINO's element type as the hint's short name (``f32``, ``bf16``, ``dynamic``)."""
    return getattr(t, "get_type_name", lambda: str(t))()


def open_runner(root: Path, manifest, device: str, max_batch: int) -> OpenVINOBackend:
    path = inside(root, manifest.require_file("model", root))
    if path.suffix == ".xml":  # the IR's weights: the .bin beside it, which OpenVINO reads by that name
        inside(root, str(Path(manifest.require_file("model", root)).with_suffix(".bin")))
    target = "CPU" if device in ("auto", "cpu") else device.upper()
    hint, mode, why = resolve_precision(manifest.options.get("inference_precision"), manifest.precision)
    quantized = manifest.precision not in _MODES
    with load_errors(path, "an OpenVINO model"):
        backend = OpenVINOBackend(path, device=target, max_batch=max_batch, inference_precision=hint,
                                  execution_mode=mode, reason=why, verified_as=F32 if quantized else None)
        inputs = backend.compiled.inputs
        if len(inputs) != 1 or inputs[0].get_partial_shape().rank.get_length() != 4:
            raise ArtifactError(f"{path} does not take one (B, 3, H, W) image batch")
        dims = [d.get_length() if d.is_static else None for d in inputs[0].get_partial_shape()]
    check_input_size(path, dims, manifest)
    if manifest.precision == "int8":
        backend.reason += int8_kernels_note(backend.matmul_precisions())
    return backend


def int8_kernels_note(precisions: dict[str, int]) -> str:
    """What to add to an int8 artifact's reason when OpenVINO compiled none of its linears to an int8
    GEMM (CPUs without VNNI or AMX: it multiplies decompressed weights in float instead, so an fp32
    artifact runs faster there); "" where it did. ``precisions``: :meth:`OpenVINOBackend.matmul_precisions`."""
    if any(k.startswith("FullyConnected") and k.endswith((" i8", " u8")) for k in precisions):
        return ""
    _, evidence = int8_dot_products()
    return (f"; no int8 GEMM kernels here ({evidence}): its int8 linears run as float GEMMs on decompressed "
            "weights, so an fp32 artifact is faster on this CPU")
