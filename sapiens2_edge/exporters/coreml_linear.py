"""A quantized linear's decomposition in the ops coremltools maps onto Core ML quantization.

From :class:`~sapiens2_edge.quantization.decomposed.DecomposedLinear`: an int8 weight with its
scales becomes ``quantized_decomposed.dequantize_per_channel`` (per tensor: ``_per_tensor``),
which the converter turns into a ``constexpr_blockwise_shift_scale`` (int8 data, our scales;
nothing is re-quantized); a static input scale becomes a ``quantize``/``dequantize`` pair (W8A8),
and the prefix tokens, which keep their own per-token scale, get that rounding in plain ops. fp16
weights stay float (FLOAT16 compute stores them in fp16). Dynamic (per-token) activations and fp8
do not exist in Core ML: refused with a :class:`~sapiens2_edge.errors.ConfigError`.
"""

from __future__ import annotations

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers torch.ops.quantized_decomposed
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..kernels import numerics as nx
from ..quantization.decomposed import DecomposedLinear, fake_quantize_tokens

qd = torch.ops.quantized_decomposed
Q = int(nx.INT8_MAX)


def check_coreml(d: DecomposedLinear, name: str) -> None:
    if d.weight_dtype == "fp8" or d.act_dtype not in (None, "int8"):
        raise ConfigError(f"layer {name}: Core ML has no fp8 weights or activations; "
                          "export an int8-weight, int8 (static) or fp16 model to coreml")
    if d.act_mode == "dynamic":
        raise ConfigError(f"layer {name}: Core ML has no dynamic (per-token) activation quantization; "
                          "quantize with activation_mode='static' for a Core ML W8A8 export, "
                          "or use scheme 'int8-weight'")


class CoreMLLinear(nn.Module):
    """A QuantLinear's decomposition re-expressed for torch.export -> coremltools."""

    def __init__(self, d: DecomposedLinear, name: str):
        super().__init__()
        check_coreml(d, name)
        self.int8 = d.weight_dtype == "int8"
        self.per_channel = d.per_channel
        if self.int8:
            self.register_buffer("qweight", d.weight.clone())
            self.register_buffer("scale", d.weight_scale.float().clone())
            self.register_buffer("zero", torch.zeros(self.scale.numel(), dtype=torch.int64))
        else:
            self.register_buffer("weight", d.dequantized_weight().clone())
        self.bias = None if d.bias is None else nn.Parameter(d.bias.float().clone(), False)
        self.input_scale = None if d.input_scale is None else float(d.input_scale.item())
        self.prefix_tokens = d.prefix_tokens

    def dequantized(self) -> torch.Tensor:
        if not self.int8:
            return self.weight
        if self.per_channel:
            return qd.dequantize_per_channel(self.qweight, self.scale, self.zero, 0, -Q, Q, torch.int8)
        return qd.dequantize_per_tensor(self.qweight, float(self.scale.item()), 0, -Q, Q, torch.int8)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Static per-tensor int8 rounding (a Core ML quantize/dequantize pair); the prefix tokens
        keep their per-token scale, as in the decomposition."""
        s = self.input_scale
        body = torch.clamp(x, -Q * s, Q * s)  # our range is [-127, 127]; Core ML's int8 reaches -128
        body = qd.dequantize_per_tensor(qd.quantize_per_tensor(body, s, 0, -Q, Q, torch.int8), s, 0, -Q, Q, torch.int8)
        if x.ndim != 3 or self.prefix_tokens <= 0:
            return body
        p = min(self.prefix_tokens, x.shape[1])
        return torch.cat([fake_quantize_tokens(x[:, :p]), body[:, p:]], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = self.quantize_input(x)
        return F.linear(x, self.dequantized(), self.bias)


__all__ = ["CoreMLLinear", "check_coreml"]
