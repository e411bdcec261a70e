"""A quantized linear's decomposition in the ops coremltools maps onto Core ML quantization.

From :class:`~sapiens2_edge.quantization.decomposed.DecomposedLinear`: an int8 weight with its
scales becomes ``quantized_decomposed.dequantize_per_channel`` (per tensor: ``_per_tensor``),
which the converter turns into a ``constexpr_blockwise_shift_scale`` (int8 data, our scales;
nothing is re-quantized); a static input scale becomes a ``quantize``/``dequantize`` pair (W8A8),
and the prefix tokens, which keep their own per-token scale, get that rounding in plain ops. int4
weights become ``s2e_coreml::dequantize_int4`` (our packed nibbles and float16 group scales), which
:func:`register_int4` teaches the converter to write as a ``constexpr_blockwise_shift_scale`` of
int4 data with (N, K/G) scales: Core ML's blockwise int4, nothing re-quantized. fp16
weights stay float (FLOAT16 compute stores them in fp16). Dynamic (per-token) activations and fp8
do not exist in Core ML: refused with a :class:`~sapiens2_edge.errors.ConfigError`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers torch.ops.quantized_decomposed
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..kernels import numerics as nx
from ..quantization.decomposed import DecomposedLinear, fake_quantize_tokens

qd = torch.ops.quantized_decomposed
Q = int(nx.INT8_MAX)


@torch.library.custom_op("s2e_coreml::dequantize_int4", mutates_args=())
def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 (N, K) from packed int4 (N, K/2) and float16 (N, K/G) scales."""
    return nx.dequantize_int4(packed, scales)


@dequantize_int4.register_fake
def _(packed, scales):
    return packed.new_empty(packed.shape[0], packed.shape[1] * 2, dtype=torch.float32)


_REGISTERED: list[bool] = []


def register_int4() -> None:
    """Teach coremltools' torch frontend ``s2e_coreml::dequantize_int4``: a blockwise int4 constexpr."""
    if _REGISTERED:
        return
    from coremltools.converters.mil.frontend import _utils
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op
    from coremltools.converters.mil.mil import types

    int4 = types.nptype_from_builtin(types.string_to_builtin("int4"))

    def s2e_dequantize_int4(context, node):
        packed, scales = _get_inputs(context, node, expected=2)
        if packed.val is None or scales.val is None:
            raise ConfigError(f"{node.name}: int4 weights must be constants to become a Core ML constexpr")
        q = nx.unpack_int4(torch.from_numpy(np.asarray(packed.val, dtype=np.uint8))).numpy()
        out = _utils._construct_constexpr_dequant_op(q.astype(int4), None, np.asarray(scales.val, np.float16),
                                                     axis=None, name=node.name)
        context.add(out, node.name)

    register_torch_op(s2e_dequantize_int4, torch_alias=["s2e_coreml::dequantize_int4", "s2e_coreml.dequantize_int4"],
                      override=True)
    _REGISTERED.append(True)


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
        self.int4 = d.weight_dtype == "int4"
        self.per_channel = d.per_channel
        if self.int4:
            self.register_buffer("packed", d.weight.clone())
            self.register_buffer("scales", d.weight_scale.clone())
        elif self.int8:
            self.register_buffer("qweight", d.weight.clone())
            self.register_buffer("scale", d.weight_scale.float().clone())
            self.register_buffer("zero", torch.zeros(self.scale.numel(), dtype=torch.int64))
        else:
            self.register_buffer("weight", d.dequantized_weight().clone())
        self.bias = None if d.bias is None else nn.Parameter(d.bias.float().clone(), False)
        self.input_scale = None if d.input_scale is None else float(d.input_scale.item())
        self.prefix_tokens = d.prefix_tokens

    def dequantized(self) -> torch.Tensor:
        if self.int4:
            return dequantize_int4(self.packed, self.scales)
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


__all__ = ["CoreMLLinear", "check_coreml", "register_int4", "dequantize_int4"]
