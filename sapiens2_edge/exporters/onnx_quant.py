"""Quantized ONNX graphs from OUR recipe's scales (no ONNX Runtime calibration).

During export every :class:`~sapiens2_edge.quantization.QuantLinear` is swapped for an
:class:`ExportQLinear` built from its decomposition (:mod:`sapiens2_edge.quantization.decomposed`)
that calls one custom op, ``s2e_export::qlinear``; a custom translation
writes that op as standard ONNX:

================== =================================================================================
int8-weight        int8 weight initializer (K, N) -> ``DequantizeLinear(axis=1)`` with the per-channel
                   scales -> MatMul -> Add bias
int8, static       ``Clip(+-127 s) -> QuantizeLinear -> DequantizeLinear`` (uint8, zero point 128: the
                   recipe's int8 [-127, 127]) with the calibrated per-tensor scale, per-channel weight
                   DQ, MatMul: ONNX Runtime fuses this to ``MatMulIntegerToFloat`` (int8 GEMM),
                   OpenVINO to FakeQuantize + int8 FullyConnected. The Clip keeps the symmetric range
                   (QuantizeLinear alone saturates at -128). The first ``prefix`` tokens (CLS +
                   storage) keep their own per-token scale as in the recipe, in the same GEMM: their
                   rows are multiplied by s / s_token before the Q/DQ and their outputs by s_token / s
                   after (exact to float rounding; no second GEMM and no second weight copy). Graphs
                   made for OpenVINO on CPUs with VNNI or AMX run them in the FFN as a GEMM of their
                   own over the same weight instead (:mod:`.prefix_split`: fused post-ops).
int8, dynamic      per-token scales have no QDQ form (QuantizeLinear scales are constants or one per
                   tensor; ``DynamicQuantizeLinear`` is per tensor, losing the recipe's per-token
                   range). Exact instead: ``ReduceMax(Abs)/127 -> Round -> Clip -> +128 ->
                   Cast(uint8) -> MatMulInteger(zero points 128, 128) -> Cast -> * s_token * s_weight``.
weights of a GEMM  our int8 weights stored as uint8 ``w + 128`` with zero point 128 (the same values)
with int8 inputs   wherever the activations are int8 too: the u8 x s8 form saturates on x86 CPUs
                   without VNNI (``vpmaddubsw`` adds two u8*s8 products in int16: rel L2 7.9e-2 on one
                   random 512x256 layer in both ONNX Runtime and OpenVINO on an AVX2 EPYC), the u8 x u8
                   form is exact on every CPU (ONNX Runtime's documented remedy). The graph made for
                   OpenVINO keeps them signed (zero point 0) on CPUs with VNNI or AMX: OpenVINO builds
                   its int8 FullyConnected only from those, and runs uint8 + zero point weights as
                   compressed weights (decompressed, the GEMM in bf16/f32: 3.2x slower GEMMs on an AMX
                   Xeon, benchmarks/results/cpu_peers.md).
int4-weight        ``com.microsoft`` ``MatMulNBits`` (bits 4, block_size = the group size, default zero
                   point 8): B is our packed (N, K/2) bytes reshaped to (N, K/G, G/2), scales our float16
                   group scales as float32 (exact), then Add bias. ONNX Runtime's CPU provider runs it with
                   the int4 weights in memory (accuracy_level 1: float activations, as the recipe says);
                   OpenVINO reads it as u4 constants + decompression.
int8 attention     ``Clip(+-127 s) -> QuantizeLinear -> DequantizeLinear`` (int8, zero point 0) with the
inputs             calibrated per-tensor scale on each of q, k, v where the recipe says ``attention="int8"``:
                   OpenVINO reads the pairs as FakeQuantize on its fused attention's inputs and runs the
                   attention products in int8; ONNX Runtime computes the same values in float.
fp8 (E4M3)         FLOAT8E4M3FN weight initializer + per-channel DQ. Static: per-tensor Q/DQ in
                   FLOAT8E4M3FN (the pattern TensorRT builds fp8 GEMMs from), prefix tokens as for
                   int8; dynamic per-token activations: exact emulation (``x / s -> Cast(E4M3,
                   saturate) -> Cast -> * s``). Needs opset >= 19; targeted at TensorRT.
================== =================================================================================
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..cpu_features import int8_dot_products
from ..kernels import numerics as nx
from ..quantization.attention_inputs import AttentionInputQuant, fake_quant_int8, quantized_attentions
from ..quantization.decomposed import DecomposedLinear
from ..quantization.head_int8 import QuantConv, QuantDeconv, quantized_head_layers
from ..quantization.linear import QuantLinear

NAMESPACE = "s2e_export"
INT8_MAX, FP8_MAX, EPS = nx.INT8_MAX, nx.FP8_MAX, nx.EPS_SCALE
WEIGHT_ZERO = 128  # zero point of int8 weights stored as uint8 (see the module doc)


@torch.library.custom_op(f"{NAMESPACE}::qlinear", mutates_args=())
def qlinear(x: torch.Tensor, w_t: torch.Tensor, w_scale: torch.Tensor, w_zero: torch.Tensor,
            bias: Optional[torch.Tensor], in_scale: Optional[torch.Tensor], prefix: int, wdtype: str,
            amode: str) -> torch.Tensor:
    """What the ONNX graph computes, in torch: the decomposed layer's own arithmetic. ``amode`` "rows":
    static, every row a prefix row (its own per-token scale; see :mod:`.prefix_split`)."""
    if w_t.dtype == torch.uint8:  # int8 weights stored as uint8 + 128
        w_t = (w_t.to(torch.int16) - WEIGHT_ZERO).to(torch.int8)
    if amode == "rows":
        amode, prefix = "static", x.shape[-2]
    return DecomposedLinear(w_t.t(), w_scale, bias, wdtype, None if amode == "none" else wdtype, amode, in_scale,
                            prefix).forward(x)


@qlinear.register_fake
def _(x, w_t, w_scale, w_zero, bias, in_scale, prefix, wdtype, amode):
    return x.new_empty(*x.shape[:-1], w_t.shape[1])


@torch.library.custom_op(f"{NAMESPACE}::qlinear4", mutates_args=())
def qlinear4(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """int4 weight-only linear as ``MatMulNBits`` reads it: ``blocks`` (N, K/G, G/2) packed bytes,
    ``scales`` (N * K/G,) float32."""
    n, groups, half = blocks.shape
    return DecomposedLinear(blocks.reshape(n, groups * half), scales.reshape(n, groups), bias, "int4").forward(x)


@qlinear4.register_fake
def _(x, blocks, scales, bias):
    return x.new_empty(*x.shape[:-1], blocks.shape[0])


@torch.library.custom_op(f"{NAMESPACE}::qdq_int8", mutates_args=())
def qdq_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 quantize -> dequantize of ``x`` with one scale (an attention input)."""
    return fake_quant_int8(x, scale)


@qdq_int8.register_fake
def _(x, scale):
    return torch.empty_like(x)


@torch.library.custom_op(f"{NAMESPACE}::dq_channels", mutates_args=())
def dq_channels(w: torch.Tensor, scale: torch.Tensor, axis: int) -> torch.Tensor:
    """int8 ``w`` times its per-channel float32 ``scale`` along ``axis``: DequantizeLinear without a zero
    point (0); OpenVINO folds a Subtract of a zero point input into no int8 convolution."""
    shape = [1] * w.dim()
    shape[axis] = -1
    return w.float() * scale.reshape(shape)


@dq_channels.register_fake
def _(w, scale, axis):
    return torch.empty(w.shape, dtype=torch.float32, device=w.device)


class ExportQuantDeconv(nn.Module):
    """Export-time stand-in for a :class:`~sapiens2_edge.quantization.head_int8.QuantDeconv`: the input's
    ``qdq_int8`` and the weights' ``dq_channels`` (axis 1, output channels) around a float ConvTranspose."""

    def __init__(self, m: QuantDeconv):
        super().__init__()
        self.stride, self.padding = m.stride, m.padding
        self.register_buffer("weight", m.weight.detach().clone())
        self.register_buffer("weight_scale", m.weight_scale.detach().clone())
        self.register_buffer("input_scale", m.input_scale.detach().reshape(()).clone())  # QuantizeLinear's scalar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(qdq_int8(x, self.input_scale), dq_channels(self.weight, self.weight_scale, 1),
                                  stride=self.stride, padding=self.padding)


class ExportQuantConv(nn.Module):
    """Export-time stand-in for a :class:`~sapiens2_edge.quantization.head_int8.QuantConv`: the input's
    ``qdq_int8`` and the weights' ``dq_channels`` (axis 0, output channels) around a float Conv with its bias."""

    def __init__(self, m: QuantConv):
        super().__init__()
        self.padding = m.padding
        self.register_buffer("weight", m.weight.detach().clone())
        self.register_buffer("weight_scale", m.weight_scale.detach().clone())
        self.register_buffer("input_scale", m.input_scale.detach().reshape(()).clone())  # QuantizeLinear's scalar
        self.register_buffer("bias", m.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(qdq_int8(x, self.input_scale), dq_channels(self.weight, self.weight_scale, 0), self.bias,
                        padding=self.padding)


@contextlib.contextmanager
def swapped_modules(model: nn.Module, found: dict[str, nn.Module], make: Callable[[nn.Module], nn.Module]) -> Iterator[int]:
    """Replace each named module by ``make(module)`` for the duration; yields how many."""
    from ..quantization.model import set_module

    try:
        for n, m in found.items():
            set_module(model, n, make(m))
        yield len(found)
    finally:
        for n, m in found.items():
            set_module(model, n, m)


def export_head(model: nn.Module, int8_kernels: bool = True):
    """Swap every int8 (transposed) convolution of the head for its ONNX form (Q/DQ, which runtimes run on
    int8 convolution kernels) for the duration; yields how many. ``int8_kernels`` False keeps the torch
    form (the input's rounding and the weights' scaling as float ops, a float convolution): OpenVINO's
    int8 convolutions on a CPU without VNNI or AMX miss the recipe (rel L2 0.12 on a tiny seg model,
    where the check allows 0.05), so its graphs keep the head float there."""
    if not int8_kernels:
        return contextlib.nullcontext(0)
    return swapped_modules(model, quantized_head_layers(model), lambda m: (ExportQuantDeconv if isinstance(m, QuantDeconv) else ExportQuantConv)(m))


class ExportAttentionInputQuant(nn.Module):
    """Export-time stand-in for an :class:`AttentionInputQuant`: the same scales, one ``qdq_int8`` each."""

    def __init__(self, m: AttentionInputQuant):
        super().__init__()
        for name in ("q_scale", "k_scale", "v_scale"):
            self.register_buffer(name, getattr(m, name).detach().reshape(()).clone())  # QuantizeLinear's scalar

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        return qdq_int8(q, self.q_scale), qdq_int8(k, self.k_scale), qdq_int8(v, self.v_scale)


def export_attention_inputs(model: nn.Module):
    """Swap every attention's int8 input quantization for its ONNX form for the duration; yields how many."""
    from ..quantization.attention_inputs import SLOT

    return swapped_modules(model, {f"{n}.{SLOT}": m for n, m in quantized_attentions(model).items()},
                    ExportAttentionInputQuant)


class ExportQLinear(nn.Module):
    """Export-time stand-in for an int8 / fp8 QuantLinear's decomposition: weight transposed to
    (K, N) as MatMul reads it, per-channel scales (a per-tensor scale repeated), the static input
    scale as a scalar."""

    def __init__(self, d: DecomposedLinear, signed_weights: bool = False):
        super().__init__()
        self.wdtype, self.amode, self.prefix = d.weight_dtype, d.act_mode, d.prefix_tokens
        w_t, zero = d.weight.t().contiguous(), 0
        # An int8 x int8 GEMM: the u8 x u8 form (module doc), unless the graph is for OpenVINO on a CPU
        # with VNNI or AMX: its int8 FullyConnected is built only from signed weights with zero point 0
        # (it runs u8 weights with a zero point as compressed weights: decompressed, the GEMM in float).
        if self.wdtype == "int8" and self.amode != "none" and not signed_weights:
            w_t, zero = (w_t.to(torch.int16) + WEIGHT_ZERO).to(torch.uint8), WEIGHT_ZERO
        self.register_buffer("w_t", w_t)
        self.register_buffer("w_scale", d.channel_scales())
        self.register_buffer("w_zero", torch.full((d.weight.shape[0],), zero, dtype=w_t.dtype))  # DQ's zero point
        self.register_buffer("bias", None if d.bias is None else d.bias.float().clone())
        self.register_buffer("in_scale", None if d.input_scale is None else d.input_scale.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return qlinear(x, self.w_t, self.w_scale, self.w_zero, self.bias, self.in_scale, self.prefix, self.wdtype, self.amode)


class ExportQLinear4(nn.Module):
    """Export-time stand-in for an int4-weight QuantLinear: OUR packed bytes in MatMulNBits' B layout
    and our group scales, nothing re-quantized."""

    def __init__(self, d: DecomposedLinear):
        super().__init__()
        n, g = d.weight.shape[0], d.group_size
        self.register_buffer("blocks", d.weight.reshape(n, -1, g // 2).contiguous())
        self.register_buffer("scales", d.weight_scale.float().reshape(-1).contiguous())
        self.register_buffer("bias", None if d.bias is None else d.bias.float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return qlinear4(x, self.blocks, self.scales, self.bias)


def _export_module(d: DecomposedLinear, signed_weights: bool = False) -> nn.Module:
    if d.weight_dtype == "fp16":
        return float_linear(d)
    return ExportQLinear4(d) if d.weight_dtype == "int4" else ExportQLinear(d, signed_weights)


def openvino_module(d: DecomposedLinear) -> nn.Module:
    """The export form of a quantized linear in a graph made for OpenVINO: int8 weights kept signed
    where this CPU's int8 dot products are exact (see :func:`int8_dot_products`), else uint8 + 128."""
    return _export_module(d, signed_weights=int8_dot_products()[0])


def float_linear(d: DecomposedLinear) -> nn.Linear:
    """fp16-stored weights export as a float Linear holding exactly those values (the fp16 ONNX
    conversion rounds them back to the same halves)."""
    out_features, in_features = d.weight.shape
    lin = nn.Linear(in_features, out_features, bias=d.bias is not None)
    with torch.no_grad():
        lin.weight.copy_(d.dequantized_weight())
        if d.bias is not None:
            lin.bias.copy_(d.bias)
    return lin


@contextlib.contextmanager
def export_modules(model: nn.Module, make: Callable[[DecomposedLinear], nn.Module] | None = None
                   ) -> Iterator[dict[str, str]]:
    """Swap every QuantLinear for its export form (``make``, by default the ONNX one) for the
    duration; yields {layer: kind}."""
    from ..quantization.model import set_module

    swapped = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    kinds = {}
    try:
        for n, m in swapped.items():
            d = m.decompose()
            kinds[n] = d.kind
            set_module(model, n, (make or _export_module)(d))
        yield kinds
    finally:
        for n, m in swapped.items():
            set_module(model, n, m)


# --- ONNX translation --------------------------------------------------------------------------------
def translation_table(opset: int) -> dict:
    """``custom_translation_table`` for ``torch.onnx.export``."""
    return {torch.ops.s2e_export.qlinear.default: _make_translation(opset),
            torch.ops.s2e_export.qlinear4.default: _make_translation4(),
            torch.ops.s2e_export.qdq_int8.default: _make_qdq_translation(),
            torch.ops.s2e_export.dq_channels.default: _make_dq_channels_translation()}


def _make_qdq_translation():
    import onnx
    from onnxscript import opset18 as op

    def qdq_int8_onnx(x, scale):
        zero = op.Constant(value=onnx.helper.make_tensor("z", onnx.TensorProto.INT8, [], [0]))
        limit = op.Mul(scale, op.Constant(value=onnx.helper.make_tensor("m", onnx.TensorProto.FLOAT, [], [INT8_MAX])))
        x = op.Clip(x, op.Neg(limit), limit)
        return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero), scale, zero)

    return qdq_int8_onnx


def _make_dq_channels_translation():
    from onnxscript import opset18 as op

    def dq_channels_onnx(w, scale, axis: int):
        return op.DequantizeLinear(w, scale, axis=axis)

    return dq_channels_onnx


#: MatMulNBits accuracy_level 1: the activations stay float32 (level 4 would quantize them to int8)
NBITS_ACCURACY_LEVEL = 1


def _matmul_nbits():
    """onnxscript's handle on ``com.microsoft::MatMulNBits`` (ONNX itself has no schema for contrib ops)."""
    from onnx.defs import OpSchema
    from onnxscript.values import Op, Opset

    param, attr = OpSchema.FormalParameter, OpSchema.Attribute
    ints = OpSchema.AttrType.INT
    schema = OpSchema(
        "MatMulNBits", "com.microsoft", 1,
        inputs=[param("A", "T1"), param("B", "T2"), param("scales", "T1")], outputs=[param("Y", "T1")],
        type_constraints=[("T1", ["tensor(float)"], "activations and scales"), ("T2", ["tensor(uint8)"], "packed")],
        attributes=[attr("K", ints, ""), attr("N", ints, ""), attr("bits", ints, ""), attr("block_size", ints, ""),
                    attr("accuracy_level", ints, "")])
    return Op(Opset("com.microsoft", 1), "MatMulNBits", schema)


def _make_translation4():
    from onnxscript import opset18 as op

    matmul_nbits = _matmul_nbits()

    def qlinear4_onnx(x, blocks, scales, bias=None):
        n, groups, half = blocks.shape
        y = matmul_nbits(x, blocks, scales, K=groups * half * 2, N=n, bits=4, block_size=half * 2,
                         accuracy_level=NBITS_ACCURACY_LEVEL)
        if bias is not None:
            y = op.Add(y, bias)
        return y

    return qlinear4_onnx


def _make_translation(opset: int):
    import onnx
    from onnxscript import opset18, opset19

    op = opset19 if opset >= 19 else opset18
    TP = onnx.TensorProto

    def const(value: float | int, dtype: int):
        return op.Constant(value=onnx.helper.make_tensor("c", dtype, [], [value]))

    def token_qdq(x, dtype: str):
        """Per-token symmetric quantize -> dequantize of (..., K) in float ops (exact)."""
        qmax = INT8_MAX if dtype == "int8" else FP8_MAX
        amax = op.ReduceMax(op.Abs(x), op.Constant(value_ints=[-1]), keepdims=1)
        s = op.Div(amax, const(qmax, TP.FLOAT))
        s = op.Where(op.Greater(s, const(0.0, TP.FLOAT)), s, const(EPS, TP.FLOAT))
        if dtype == "int8":
            q = op.Clip(op.Round(op.Div(x, s)), const(-qmax, TP.FLOAT), const(qmax, TP.FLOAT))
        else:
            q = op.Cast(op.Cast(op.Div(x, s), to=TP.FLOAT8E4M3FN, saturate=1), to=TP.FLOAT)
        return op.Mul(q, s)

    def weight_dq(w_t, w_scale, w_zero):
        return op.DequantizeLinear(w_t, w_scale, w_zero, axis=1)

    def static_qdq(x, s, wdtype: str):
        if wdtype == "int8":
            zero = const(128, TP.UINT8)
            x = op.Clip(x, op.Mul(s, const(-INT8_MAX, TP.FLOAT)), op.Mul(s, const(INT8_MAX, TP.FLOAT)))
        else:
            zero = const(0.0, TP.FLOAT8E4M3FN)
        return op.DequantizeLinear(op.QuantizeLinear(x, s, zero), s, zero)

    def row_scales(x, wdtype: str):
        """Each row's own scale, largest |x| / qmax (EPS for an all-zero row), as the recipe's."""
        qmax = INT8_MAX if wdtype == "int8" else FP8_MAX
        s_tok = op.Div(op.ReduceMax(op.Abs(x), op.Constant(value_ints=[-1]), keepdims=1), const(qmax, TP.FLOAT))
        return op.Where(op.Greater(s_tok, const(0.0, TP.FLOAT)), s_tok, const(EPS, TP.FLOAT))

    def rescaled_gemm(x, into, back, w_t, w_scale, w_zero, s, wdtype: str):
        """Rows multiplied by ``into`` onto the static grid, the static Q/DQ and GEMM, outputs by ``back``."""
        return op.Mul(op.MatMul(static_qdq(op.Mul(x, into), s, wdtype), weight_dq(w_t, w_scale, w_zero)), back)

    def static_rows(x, w_t, w_scale, w_zero, s, wdtype: str):
        """Every row with its own scale, through the static Q/DQ: rows scaled by s / s_row onto the
        static grid before it, outputs by s_row / s after (the prefix rows' GEMM of .prefix_split)."""
        s_row = row_scales(x, wdtype)
        return rescaled_gemm(x, op.Div(s, s_row), op.Div(s_row, s), w_t, w_scale, w_zero, s, wdtype)

    def static_with_prefix(x, w_t, w_scale, w_zero, s, prefix: int, wdtype: str):
        """One quantized GEMM for all tokens: prefix rows are scaled by s / s_token onto the static
        grid before Q/DQ and their outputs by s_token / s after, which quantizes them with their own
        per-token scale as the recipe does (to float rounding) without a second GEMM or weight copy."""
        axis = op.Constant(value_ints=[1])
        s_tok = row_scales(op.Slice(x, op.Constant(value_ints=[0]), op.Constant(value_ints=[prefix]), axis), wdtype)
        shape = op.Shape(x)
        rest = op.Concat(op.Slice(shape, op.Constant(value_ints=[0]), op.Constant(value_ints=[1])),
                         op.Sub(op.Slice(shape, op.Constant(value_ints=[1]), op.Constant(value_ints=[2])),
                                op.Constant(value_ints=[prefix])), op.Constant(value_ints=[1]), axis=0)
        ones = op.Expand(const(1.0, TP.FLOAT), rest)
        into = op.Concat(op.Div(s, s_tok), ones, axis=1)  # (B, T, 1): rows onto the static grid
        back = op.Concat(op.Div(s_tok, s), ones, axis=1)
        return rescaled_gemm(x, into, back, w_t, w_scale, w_zero, s, wdtype)

    def dynamic_int8(x, w_t, w_scale, w_zero):
        amax = op.ReduceMax(op.Abs(x), op.Constant(value_ints=[-1]), keepdims=1)
        s = op.Div(amax, const(INT8_MAX, TP.FLOAT))
        s = op.Where(op.Greater(s, const(0.0, TP.FLOAT)), s, const(EPS, TP.FLOAT))
        q = op.Clip(op.Round(op.Div(x, s)), const(-INT8_MAX, TP.FLOAT), const(INT8_MAX, TP.FLOAT))
        q = op.Cast(op.Add(q, const(128.0, TP.FLOAT)), to=TP.UINT8)
        acc = op.Cast(op.MatMulInteger(q, w_t, const(128, TP.UINT8), w_zero), to=TP.FLOAT)
        return op.Mul(op.Mul(acc, s), w_scale)

    def qlinear_onnx(x, w_t, w_scale, w_zero, bias=None, in_scale=None, prefix: int = 0, wdtype: str = "int8",
                     amode: str = "none"):
        if amode == "none":
            y = op.MatMul(x, weight_dq(w_t, w_scale, w_zero))
        elif amode == "dynamic" and wdtype == "int8":
            y = dynamic_int8(x, w_t, w_scale, w_zero)
        elif amode == "dynamic":
            y = op.MatMul(token_qdq(x, wdtype), weight_dq(w_t, w_scale, w_zero))
        elif amode == "rows":
            y = static_rows(x, w_t, w_scale, w_zero, in_scale, wdtype)
        elif prefix:
            y = static_with_prefix(x, w_t, w_scale, w_zero, in_scale, prefix, wdtype)
        else:
            y = op.MatMul(static_qdq(x, in_scale, wdtype), weight_dq(w_t, w_scale, w_zero))
        if bias is not None:
            y = op.Add(y, bias)
        return y

    return qlinear_onnx


def has_fp8_layers(model: nn.Module) -> bool:
    return any(isinstance(m, QuantLinear) and m.config.weight.dtype == "fp8" for m in model.modules())


def needed_opset(model: nn.Module, opset: int) -> int:
    """fp8 Q/DQ needs opset 19 (FLOAT8E4M3FN); everything else exports at the asked opset."""
    return max(opset, 19) if has_fp8_layers(model) else opset


__all__ = ["ExportQLinear", "ExportQLinear4", "export_modules", "openvino_module", "int8_dot_products", "translation_table", "needed_opset", "has_fp8_layers", "qlinear", "swapped_modules",
           "export_attention_inputs"]
