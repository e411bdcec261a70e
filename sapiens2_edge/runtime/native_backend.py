"""Native backend: the C++ engine (``sapiens2_edge._native``: OpenBLAS GEMMs, OpenMP) on the CPU.

Needs no torch, onnxruntime or openvino. Runs artifacts that carry ``weights.safetensors``
(fp32, fp16- or bf16-stored, int8-weight). One backend may be called from several threads at once.

GEMM precision: ``fp32`` (OpenBLAS, the reference numerics) or ``bf16`` (oneDNN, opened at run time
from the ``onednn-cpu-gomp`` wheel: ``pip install 'sapiens2-edge[onednn]'``; its VNNI/AVX-512-BF16/AMX
kernels are chosen by the CPU it runs on). A bf16 artifact runs bf16 GEMMs where oneDNN is installed
and the CPU computes bf16 natively (AVX-512-BF16 or AMX), and fp32 GEMMs on its bf16 weights
elsewhere; the backend says which and why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, ConfigError
from .base import batch_input, load_errors

PRECISIONS = ("fp32", "bf16")
#: tasks whose heads are 3x3 convolutions (the others' are transposed and 1x1 ones)
DENSE_3X3_TASKS = ("normal", "pointmap", "albedo")
#: tasks whose heads are transposed convolutions (then 1x1 ones)
DECONV_TASKS = ("pose", "seg")


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


def onednn_library() -> str:
    """Path of libdnnl.so.3 from the installed ``onednn-cpu-gomp`` wheel, or "" (the engine then tries
    $S2E_ONEDNN_LIBRARY and the loader's search path)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("onednn-cpu-gomp")
    except metadata.PackageNotFoundError:
        return ""
    for f in dist.files or ():
        if Path(str(f)).name == "libdnnl.so.3":
            return str(Path(dist.locate_file(f)).resolve())
    return ""


def onednn_status() -> tuple[bool, bool, str]:
    """(oneDNN usable, the CPU computes bf16 natively, a description or why not), loading it once."""
    native = import_native()
    why = native.load_onednn(onednn_library())
    usable, native_bf16, text = native.onednn_info()
    return usable, native_bf16, text if usable else why


def resolve_native_precision(artifact_precision: str, options: dict | None = None) -> tuple[str, str]:
    """(GEMM precision, why) for an artifact of ``artifact_precision`` on this machine: bf16 artifacts
    run bf16 GEMMs where oneDNN computes bf16 natively; an int8 artifact runs its float parts in bf16
    there when its export verified that (``options["float_precision"]``); everything else runs fp32,
    as verified (on oneDNN's kernels for this CPU when it is installed, else OpenBLAS: the engine
    says which)."""
    usable, native_bf16, text = onednn_status()
    if artifact_precision == "int8":
        check = ((options or {}).get("float_precision") or {}).get("bf16") or {}
        if check.get("passed") and usable and native_bf16:
            return "bf16", (f"int8 artifact: float parts in bf16 (verified at export against the "
                            f"{check.get('against', 'torch model')}): {text}")
        why = ("its export did not verify bf16" if not check.get("passed") else
               f"{text} would emulate bf16 on this CPU" if usable else text)
        return "fp32", f"int8 artifact: float parts in fp32 ({why})"
    if artifact_precision != "bf16":
        return "fp32", f"{artifact_precision} artifact: GEMMs in fp32, as verified"
    if usable and native_bf16:
        return "bf16", f"bf16 artifact: bf16 GEMMs on {text}"
    if usable:
        return "fp32", f"bf16 artifact: fp32 GEMMs on its bf16 weights ({text} would emulate bf16 on this CPU)"
    return "fp32", (f"bf16 artifact: fp32 GEMMs on its bf16 weights ({text}; "
                    "pip install 'sapiens2-edge[onednn]' for bf16 GEMMs)")


class NativeBackend:
    name = "native"
    device = "cpu"

    def __init__(self, path: str | os.PathLike, config: dict | None = None, max_batch: int | None = None,
                 precision: str = "fp32", reason: str = ""):
        """``path``: an artifact directory or a weights ``.safetensors`` (``config``: manifest-like dict
        with ``arch``, ``head``, ``rope_mode``; default: the file's metadata). ``precision``: the GEMMs'
        (``fp32`` or ``bf16``, which needs oneDNN)."""
        if precision not in PRECISIONS:
            raise ConfigError(f"native precision {precision!r} is not one the engine runs; expected one of {PRECISIONS}")
        native = import_native()
        usable, native_bf16, why = onednn_status()  # loaded before the engine: it runs fp32 GEMMs on it too
        if precision == "bf16":
            if not usable:
                raise BackendUnavailableError(f"bf16 GEMMs on the native engine need oneDNN: {why}")
            if not native_bf16:
                raise BackendUnavailableError(f"this CPU has no native bf16 ({why} dispatches to no AVX-512-BF16 or "
                                              "AMX kernels): bf16 GEMMs would be emulated, slower than fp32; use "
                                              "precision='fp32'")
        self.engine = native.Engine(str(Path(path)), json.dumps(config) if config is not None else "", precision)
        self._args = (path, config, max_batch)
        self.max_batch = max_batch
        self.threads = native.num_threads()
        self.precision = precision
        self.reason = reason

    def as_verified(self) -> "NativeBackend":
        """This engine as its stored reference was checked: an int8 artifact's float parts in fp32
        (its bf16 run was checked at export against the float model, see the exporter)."""
        if self.precision == "fp32" or self.engine.weight_format != "int8":
            return self
        path, config, max_batch = self._args
        return NativeBackend(path, config, max_batch, "fp32", "as verified at export")

    def describe(self) -> str:
        packed = self.engine.int8_weights_mode == "packed"
        kept = f"weights packed once, {self.engine.packed_bytes / 2**20:.0f} MB kept"
        if self.engine.weight_format == "int8":
            floats = "bf16" if self.precision == "bf16" else "fp32"
            packing = f" ({kept})" if packed else ""
            gemm = f"int8 GEMMs{packing} on {onednn_status()[2]}, float parts in {floats}{self._winograd_note()}"
        elif self.precision == "bf16":
            gemm = f"bf16 GEMMs on {onednn_status()[2]}"
        elif self.engine.fp32_gemm == "oneDNN":
            gemm = f"fp32 GEMMs on {onednn_status()[2]}{self._winograd_note()}"
        else:
            gemm = "OpenBLAS fp32 GEMMs"
        if packed and self.engine.weight_format != "int8":  # a mixed artifact's W8A8 layers
            gemm += f", its int8 layers' {kept}"
        why = f"; {self.reason}" if self.reason else ""
        return (f"native C++ engine ({self.engine.weight_format} weights, {gemm}, "
                f"{self.threads} OpenMP threads{why}) on the CPU")

    def _winograd_note(self) -> str:
        """Where a head's float32 3x3 convolutions (dense tasks) or transposed convolutions (pose, seg) run by
        Winograd (their GEMMs on oneDNN): a float32 run on oneDNN; layers on int8 kernels stay direct."""
        if self.precision != "fp32" or self.engine.fp32_gemm != "oneDNN":
            return ""
        if self.engine.task in DENSE_3X3_TASKS:
            algorithm, layers = self.engine.conv3x3_algorithm, "3x3 convolutions"
        elif self.engine.task in DECONV_TASKS:
            algorithm, layers = self.engine.deconv_algorithm, "transposed convolutions"
        else:
            return ""
        if algorithm == "direct":
            return ""
        if algorithm == "winograd":
            return f", all float32 {layers} by Winograd"
        return f", the float32 {layers} by Winograd where it pays on this CPU"

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        return self.engine.run(batch_input(batch, self.max_batch))


def open_runner(root: Path, manifest, device: str, max_batch: int) -> NativeBackend:
    if device not in ("auto", "cpu"):
        raise ConfigError(f"the native engine runs on the CPU; device={device!r} is not available to it")
    precision, why = resolve_native_precision(manifest.precision, manifest.options)
    with load_errors(root, "a native artifact"):
        return NativeBackend(root, max_batch=max_batch, precision=precision, reason=why)
