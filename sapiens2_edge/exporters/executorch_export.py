"""ExecuTorch export: ``model.pte`` lowered to the XNNPACK delegate (``to_edge_transform_and_lower``).

The program takes one (1, 3, H, W) float32 image (XNNPACK does not resize this graph's delegated
tensors reliably with a dynamic batch, and on a phone a batch is one camera frame); the runtime
runs a batch image by image. fp16 exports a half copy of the model behind float32 input/output
casts: XNNPACK runs its fp16 kernels (on ARM with native fp16; x86 emulates), the ops it lacks
in fp16 (GELU) run in ExecuTorch's portable kernels. The bf16 rounding of RoPE's q/k (spec 1.4)
stays as casts in the portable kernels.

Limits: float only. Our int8 / fp8 linears (per-channel int8 weights from our scales, per-token
dynamic or static activations) are not mapped to XNNPACK's quantized patterns yet: a quantized
layer is a ConfigError naming it, never a silent float fallback.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path

from ..errors import BackendUnavailableError, ConfigError, ExportError

PTE_FILE = "model.pte"
PRECISIONS = ("fp32", "fp16")
INSTALL = "pip install 'sapiens2-edge[executorch]'"


def import_lowering():
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise BackendUnavailableError(f"exporting an ExecuTorch program needs executorch: {INSTALL}") from None
    return XnnpackPartitioner, to_edge_transform_and_lower


def check_model(model, precision: str) -> None:
    from ..quantization.linear import QuantLinear

    for name, m in model.named_modules():
        if isinstance(m, QuantLinear) and m.config.weight.dtype != "fp16":
            raise ConfigError(f"layer {name} is quantized {m.config.weight.dtype} weights, which the executorch format "
                              f"does not carry yet (it carries {', '.join(PRECISIONS)} layers: XNNPACK's int8 patterns "
                              "are not mapped from our scales): export it with format='ort' or 'onnx', or quantize "
                              "with scheme 'fp16'")
    if precision not in PRECISIONS:
        raise ConfigError(f"executorch precision {precision!r} is not supported; the executorch format carries "
                          f"{', '.join(PRECISIONS)} (XNNPACK float) - export int8 schemes with format='ort' or 'onnx'")


def _program(model, dtype):
    """The model as the program runs it: float32 in, float32 out, computing in ``dtype``."""
    import torch

    class Program(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model(x.to(dtype))
            return tuple(o.float() for o in (out if isinstance(out, tuple) else (out,)))

    return Program().eval()


def lower(model, input_size: tuple[int, int], precision: str) -> bytes:
    import torch

    from .onnx_export import frozen_rope
    from .onnx_quant import export_modules

    partitioner, to_edge_transform_and_lower = import_lowering()
    half = precision == "fp16"
    work = copy.deepcopy(model) if half else model
    x = torch.zeros(1, 3, *input_size)
    with frozen_rope(work, input_size), export_modules(work), warnings.catch_warnings(), torch.no_grad(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch").setLevel(logging.ERROR)
        if half:
            work.half()
        program = _program(work, torch.float16 if half else torch.float32)
        try:
            ep = torch.export.export(program, (x,))
            return to_edge_transform_and_lower(ep, partitioner=[partitioner()]).to_executorch().buffer
        except Exception as e:  # noqa: BLE001 - surface any lowering failure as ours
            raise ExportError(f"ExecuTorch lowering failed for {model.arch.name} {model.task}: {e}") from e


def write(model, out_dir: Path, opts) -> dict[str, str]:
    from importlib.metadata import version

    check_model(model, opts.precision)
    (out_dir / PTE_FILE).write_bytes(lower(model, opts.input_size, opts.precision))
    opts.notes["executorch"] = {"version": version("executorch"), "delegate": "XNNPACK", "program_batch": 1,
                                "compute": "fp16" if opts.precision == "fp16" else "fp32"}
    return {PTE_FILE: "model"}


def verifier(out_dir: Path, files: dict[str, str]):
    from ..runtime.executorch_backend import ExecuTorchBackend

    return ExecuTorchBackend(out_dir / PTE_FILE)
