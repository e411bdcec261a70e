"""ExecuTorch export: ``model.pte`` lowered to the XNNPACK delegate (``to_edge_transform_and_lower``).

The program takes one (1, 3, H, W) float32 image (XNNPACK does not resize this graph's delegated
tensors reliably with a dynamic batch, and on a phone a batch is one camera frame); the runtime
runs a batch image by image. fp16 exports a half copy of the model behind float32 input/output
casts: XNNPACK runs its fp16 kernels (on ARM with native fp16; x86 emulates), the ops it lacks
in fp16 (GELU) run in ExecuTorch's portable kernels. The bf16 rounding of RoPE's q/k (spec 1.4)
stays as casts in the portable kernels.

Quantized models: our int8 (dynamic), int8-weight and int4-weight linears become XNNPACK's
dynamically quantized GEMMs holding our integer weights and scales (``executorch_linear``: the
activations are quantized per token at run time, so a weight-only scheme is checked at the bound of
quantized activations); static activation ranges and fp8 are a ConfigError naming the layer, never a
silent float fallback.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections import Counter
from pathlib import Path

from ..errors import BackendUnavailableError, ConfigError, ExportError
from ..models.heads import InstanceNorm

PTE_FILE = "model.pte"
QUANTIZED = ("int8-weight", "int4-weight", "int8", "mixed")
PRECISIONS = ("fp32", "fp16", *QUANTIZED)
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
    from .executorch_linear import unsupported

    if precision not in PRECISIONS:
        raise ConfigError(f"executorch precision {precision!r} is not supported; the executorch format carries "
                          f"{', '.join(PRECISIONS)} ({', '.join(QUANTIZED)} from a quantized model)")
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            why = unsupported(m.decompose().kind)
            if why:
                raise ConfigError(f"layer {name} is quantized {m.decompose().kind}, which the executorch format does "
                                  f"not carry: {why}")


def tolerance_for(precision: str) -> float:
    """The export check's bound: XNNPACK quantizes the activations of weight-only layers too."""
    from ..artifact.reference import TOLERANCE
    from ..artifact.reference import tolerance_for as default

    return TOLERANCE["int8"] if precision in QUANTIZED else default(precision)


@contextlib.contextmanager
def reference_form(model):
    """What a quantized program is checked against: the torch model with its quantized linears in
    the form lowered (XNNPACK's per-token asymmetric activations, int4 scales in bfloat16), so the
    check measures the runtime, not the change of activation quantizer; the artifact's distance to
    the QuantizedModel itself is in the manifest's vs_float entry when a float model is given."""
    from .executorch_linear import xnnpack_linear
    from .onnx_quant import export_modules

    with export_modules(model, xnnpack_linear) as kinds:
        quantized = any(k != "fp16-weight" for k in kinds.values())
        yield "its linears as XNNPACK runs them (int8 activations per token, asymmetric)" if quantized else None


class _Fp32InstanceNorm(InstanceNorm):
    """InstanceNorm computed in float32 in a float16 program: ExecuTorch's portable reduction over a
    head feature map (tens of thousands of pixels per channel at full size) overflows float16 and
    returns inf; torch's autocast keeps instance norm in float32 for the same reason."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


def _instance_norms_in_fp32(model) -> None:
    from ..quantization.model import set_module

    for name in [n for n, m in model.named_modules() if isinstance(m, InstanceNorm) and not isinstance(m, _Fp32InstanceNorm)]:
        set_module(model, name, _Fp32InstanceNorm())


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


def lower(model, input_size: tuple[int, int], precision: str) -> tuple[bytes, dict[str, str]]:
    import torch

    from .executorch_linear import xnnpack_linear
    from .onnx_export import frozen_rope
    from .onnx_quant import export_modules

    partitioner, to_edge_transform_and_lower = import_lowering()
    half = precision == "fp16"
    work = copy.deepcopy(model) if half else model
    x = torch.zeros(1, 3, *input_size)
    with frozen_rope(work, input_size), export_modules(work, xnnpack_linear) as kinds, warnings.catch_warnings(), torch.no_grad(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch").setLevel(logging.ERROR)
        if half:
            work.half()
            _instance_norms_in_fp32(work)
        program = _program(work, torch.float16 if half else torch.float32)
        try:
            ep = torch.export.export(program, (x,))
            edge = to_edge_transform_and_lower(ep, partitioner=[partitioner()])
        except Exception as e:  # noqa: BLE001 - surface any lowering failure as ours
            raise ExportError(f"ExecuTorch lowering failed for {model.arch.name} {model.task}: {e}") from e
        kept = undelegated(edge.exported_program().graph)
        if kept and kinds:
            raise ExportError(f"XNNPACK did not take {len(kept)} of the quantized layers' ops ({', '.join(kept[:3])}); "
                              "outside the delegate they would run as slow portable kernels")
        return edge.to_executorch().buffer, kinds


#: ops of a quantized linear that must end up inside the XNNPACK delegate
_QUANTIZED_LINEAR_OPS = ("linear", "addmm", "aten.mm", "quantize_per_token", "dequantize_per_channel",
                         "choose_qparams")


def undelegated(graph) -> list[str]:
    """The names of the linear and quantize/dequantize calls left in the program's own graph."""
    return [n.name for n in graph.nodes
            if n.op == "call_function" and any(k in str(n.target) for k in _QUANTIZED_LINEAR_OPS)]


def write(model, out_dir: Path, opts) -> dict[str, str]:
    from importlib.metadata import version

    from .executorch_linear import KERNELS

    check_model(model, opts.precision)
    program, kinds = lower(model, opts.input_size, opts.precision)
    (out_dir / PTE_FILE).write_bytes(program)
    opts.notes["executorch"] = {"version": version("executorch"), "delegate": "XNNPACK", "program_batch": 1,
                                "compute": "fp16" if opts.precision == "fp16" else "fp32"}
    if kinds:
        counts = Counter(KERNELS[k] for k in kinds.values())
        notes = {"xnnpack_linears": dict(sorted(counts.items()))}
        if any(k.startswith("qd8") for k in counts):
            notes["activations"] = "int8 per token, asymmetric, computed at run time (XNNPACK qd8)"
        if "qd8-f32-qb4w" in counts:
            notes["int4_scales"] = "our float16 group scales rounded to bfloat16 (XNNPACK's blockwise format)"
        opts.notes["quantization"] = notes
    return {PTE_FILE: "model"}


def verifier(out_dir: Path, files: dict[str, str]):
    from ..runtime.executorch_backend import ExecuTorchBackend

    return ExecuTorchBackend(out_dir / PTE_FILE)
