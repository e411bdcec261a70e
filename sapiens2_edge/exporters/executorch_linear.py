"""Our quantized linears as the quantize/dequantize patterns that ExecuTorch's XNNPACK partitioner
fuses into its quantized fully-connected kernels.

XNNPACK's quantized GEMMs through ExecuTorch take int8 activations: ``qd8`` (each row of the input
quantized at run time, asymmetric int8) against ``qc8w`` (int8 weights, one scale per output channel)
or ``qb4w`` (int4 weights, one scale per group of inputs). There is no float-activation kernel with
quantized weights behind the partitioner, so on this format:

=============== ===============================================================================
int8 (dynamic)  qd8 x qc8w from our int8 weights and per-channel scales; XNNPACK's per-token
                activation scales are asymmetric where ours are symmetric (same range, finer)
int8-weight     qd8 x qc8w: our int8 weights, activations quantized per token at run time
int4-weight     qd8 x qb4w: our int4 values; XNNPACK stores blockwise scales as bfloat16, so our
                float16 group scales are rounded to bfloat16 here, in the graph the program is
                checked against
fp16 layers     a float linear holding the float16-rounded weight (XNNPACK fp32)
=============== ===============================================================================

Static activation ranges do not map: XNNPACK's static int8 linear also quantizes its output with a
calibrated scale, which our recipes do not have. fp8 has no XNNPACK form. Both are refused by
:func:`unsupported`, naming the layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import numerics as nx
from ..quantization.decomposed import DecomposedLinear
from .onnx_quant import float_linear

#: what each layer kind becomes (recorded in the manifest)
KERNELS = {"int8/dynamic": "qd8-f32-qc8w", "int8-weight/none": "qd8-f32-qc8w", "int4-weight/none": "qd8-f32-qb4w",
           "fp16-weight": "f32 (fp16-rounded weights)"}


def unsupported(kind: str) -> str | None:
    """Why a layer of ``kind`` has no XNNPACK form, or None when it has one."""
    if kind in KERNELS:
        return None
    if kind.endswith("/static"):
        return ("XNNPACK's static int8 linear needs a calibrated output scale, which the recipe does not have; "
                "quantize with dynamic activations (int8 dynamic, int8-weight or int4-weight)")
    return "XNNPACK has no fp8 kernels; quantize with int8 (dynamic), int8-weight or int4-weight"


def _ops():
    import torch.ao.quantization.fx._decomposed  # noqa: F401  registers torch.ops.quantized_decomposed

    return torch.ops.quantized_decomposed


class XnnpackDynamicLinear(nn.Module):
    """``linear(dq(q(x per token)), dq(our weight))``: the pattern XNNPACK lowers to qd8 x qc8w/qb4w."""

    def __init__(self, d: DecomposedLinear):
        super().__init__()
        n = d.weight.shape[0]
        self.group_size = d.group_size
        if d.weight_dtype == "int4":
            self.register_buffer("weight", nx.unpack_int4(d.weight).contiguous())
            self.register_buffer("scale", d.weight_scale.to(torch.bfloat16).float().contiguous())
            self.register_buffer("zero", torch.zeros(self.scale.shape, dtype=torch.int8))
        else:
            self.register_buffer("weight", d.weight.clone())
            self.register_buffer("scale", d.channel_scales().clone())
            self.register_buffer("zero", torch.zeros(n, dtype=torch.int64))
        self.register_buffer("bias", None if d.bias is None else d.bias.float().clone())

    def dequantized_weight(self) -> torch.Tensor:
        qd = _ops()
        if self.group_size is None:
            return qd.dequantize_per_channel(self.weight, self.scale, self.zero, 0, -127, 127, torch.int8)
        return qd.dequantize_per_channel_group(self.weight, self.scale, self.zero, nx.INT4_MIN, nx.INT4_MAX,
                                               torch.int8, self.group_size, torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = _ops()
        s, z = qd.choose_qparams_per_token_asymmetric(x, torch.int8)
        xq = qd.quantize_per_token(x, s, z, -128, 127, torch.int8)
        xd = qd.dequantize_per_token(xq, s, z, -128, 127, torch.int8, torch.float32)
        return F.linear(xd, self.dequantized_weight(), self.bias)


def xnnpack_linear(d: DecomposedLinear) -> nn.Module:
    """The export form of one decomposed layer whose kind :func:`unsupported` accepts."""
    if d.weight_dtype == "fp16":
        return float_linear(d)
    return XnnpackDynamicLinear(d)


__all__ = ["KERNELS", "XnnpackDynamicLinear", "unsupported", "xnnpack_linear"]
