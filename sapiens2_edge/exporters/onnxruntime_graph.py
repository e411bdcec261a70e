"""ONNX graphs shaped for ONNX Runtime (the ``graph="onnxruntime"`` form of the onnx / ort formats).

Four parts of the model, written differently (same values to float rounding; the export's check holds
them to the fp32 tolerance):

- **Attention**: the exporter writes ``scaled_dot_product_attention`` as Transpose -> MatMul -> Softmax ->
  MatMul, which ONNX Runtime runs as written, every head's (T, T) scores in memory (607 MB per tensor at
  0.4b 1024x768). Here each attention is one ``com.microsoft`` ``MultiHeadAttention`` (Q, K, V as
  (B, T, heads x d)): MLAS' flash attention on CPU (score blocks sized to the L2 cache, an online softmax),
  fused kernels on CUDA. One 0.4b attention on a 2-core AVX2 EPYC: 0.26 s and 187 MB instead of 0.32 s
  and 774 MB. ONNX's own ``Attention`` (opset 23) still materialises the scores in ONNX Runtime 1.32
  (0.34 s, 762 MB) and would tie the graph to opset 23.
- **The head's transposed convolutions** (kernel 4, stride 2, padding 1): ONNX Runtime's ConvTranspose
  multiplies into a column buffer of C_out x 16 x H_in x W_in floats before folding it (805 MB for the
  0.4b seg head's last one at 1024x768). Each is four 2 x 2 convolutions, one per output parity, whose
  outputs interleave by pixel shuffle; in a pose / seg head the last one's four parity maps stay apart
  until the head's output (:mod:`.parity_deconv`). An int8 head's (recipe ``head="int8"``) are four
  convolutions over the int8 kernel's slices after the input's int8 rounding, the same Q/DQ values.
- **RoPE's half swap** of q and k: a Split and a Concat instead of the one Gather other exported graphs
  hold (OpenVINO runs Split / Concat as reference kernels). ONNX Runtime gathers along the last axis element
  by element: 13.1 ms for one 0.4b q (3081 x 16 x 64) against 1.5 ms for Split + Concat on a 2-core AVX2 EPYC,
  2.9 % of the whole int8 model's time. The same values, bit for bit.
- **RMSNorm** as x / sqrt(mean(x^2) + eps) * w (torch.onnx writes x * Reciprocal(Sqrt(...)) * w), the pattern
  ONNX Runtime fuses into one SimplifiedLayerNormalization: one pass instead of seven (2.4 against 4.9 ms
  for a 3081 x 1024 norm on one thread), both within float rounding of torch's rms_norm (rel 6e-8).

OpenVINO reads these graphs too (its own are exported in the standard form all the same: it fuses attention and
runs deconvolutions on oneDNN itself). A graph for another ONNX runtime (TensorRT on its own, which has
no contrib operators) is exported with ``graph="standard"``; "auto" picks it for fp8 graphs (TensorRT's).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..artifact.formats import ONNX_GRAPHS
from ..errors import ConfigError
from .onnx_quant import NAMESPACE, has_fp8_layers, swapped_modules
from .parity_deconv import ParityHead, PhasedDeconv, PhasedQuantDeconv, parity_head, phased, phased_quant

#: The Attention attribute that holds an export's attention product (None: scaled_dot_product_attention).
SLOT = "product"


@torch.library.custom_op(f"{NAMESPACE}::multi_head_attention", mutates_args=())
def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head of (B, T, heads x d) inputs, as (B, T, heads x d)."""
    b, t = q.shape[:2]

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(b, x.shape[1], heads, -1).transpose(1, 2)

    return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, t, -1)


@multi_head_attention.register_fake
def _(q, k, v, heads):
    return q.new_empty(*q.shape[:-1], v.shape[-1])


class ExportAttentionProduct(nn.Module):
    """An attention's product in its export form: q (B, T, heads, d), k / v (B, T, kv_heads, d) -> (B, T, C).
    Grouped key/value heads are repeated first (the operator takes as many as the queries have)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, t, heads = q.shape[:3]
        groups = heads // k.shape[2]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
        return multi_head_attention(q.reshape(b, t, -1), k.reshape(b, t, -1), v.reshape(b, t, -1), heads)


def graph_form(model: nn.Module, form: str) -> str:
    """The form a ``graph`` option asks for: "auto" is "onnxruntime", or "standard" for a graph with fp8
    layers (its runtime is TensorRT, whose ONNX parser has no contrib operators)."""
    if form not in ONNX_GRAPHS:
        raise ConfigError(f"ONNX graph form {form!r} is not supported; expected one of {', '.join(ONNX_GRAPHS)}")
    if form != "auto":
        return form
    return "standard" if has_fp8_layers(model) else "onnxruntime"


def record_graph_form(model: nn.Module, opts) -> str:
    """The form an export's ``graph`` option resolves to, recorded in its notes (-> manifest options)."""
    opts.notes["graph"] = graph_form(model, opts.extra["graph"])
    return opts.notes["graph"]


@contextlib.contextmanager
def onnxruntime_graph(model: nn.Module, form: str):
    """For the duration, ``model`` computes in the form ``form`` ("onnxruntime": every attention's product
    as one ``multi_head_attention`` and its RoPE's half swap as a Split and a Concat, every RMSNorm as a
    :class:`FusableRMSNorm`, a float pose / seg head as a :class:`ParityHead`, every other kernel-4 stride-2
    transposed convolution as a :class:`PhasedDeconv` (an int8 one, in its export form, as a
    :class:`PhasedQuantDeconv`); "standard": as it is). Yields {part: how many}."""
    from ..models.backbone import Attention, RMSNorm

    if form == "standard":
        yield {}
        return
    attention_modules = {n: m for n, m in model.named_modules() if isinstance(m, Attention)}
    attentions = {f"{n}.{SLOT}": None for n in attention_modules}
    norms = {n: m for n, m in model.named_modules() if type(m) is RMSNorm}
    heads = {n: m for n, m in model.named_modules() if parity_head(m)}
    with swapped_modules(model, attentions, lambda _: ExportAttentionProduct()) as n_att, \
            _attribute_set(attention_modules.values(), "rope_gather", False), \
            swapped_modules(model, norms, FusableRMSNorm) as n_norms, \
            swapped_modules(model, heads, ParityHead) as n_heads:
        deconvs = {n: m for n, m in model.named_modules() if phased(m)}  # those the parity heads left
        int8_deconvs = {n: m for n, m in model.named_modules() if phased_quant(m)}  # an int8 head's, in export form
        with swapped_modules(model, deconvs, PhasedDeconv) as n_deconv, \
                swapped_modules(model, int8_deconvs, PhasedQuantDeconv) as n_int8:
            yield {"attention": n_att, "norm": n_norms, "parity head": n_heads,
                   "deconvolution": n_deconv + n_heads + n_int8}


class FusableRMSNorm(nn.Module):
    """An RMSNorm in the form ONNX Runtime's SimplifiedLayerNormalization fusion matches: Pow, ReduceMean, Add,
    Sqrt, Div, Mul (the same weight; float rounding apart from ``F.rms_norm``'s reciprocal square root)."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


@contextlib.contextmanager
def _attribute_set(modules, name: str, value):
    """``name`` set to ``value`` on every module of ``modules`` for the duration."""
    saved = [(m, getattr(m, name)) for m in modules]
    try:
        for m in modules:
            setattr(m, name, value)
        yield
    finally:
        for m, v in saved:
            setattr(m, name, v)


def translation() -> dict:
    """``custom_translation_table`` entry: ``multi_head_attention`` -> ``com.microsoft::MultiHeadAttention``."""
    op = _multi_head_attention_op()

    def multi_head_attention_onnx(q, k, v, heads: int):
        return op(q, k, v, num_heads=heads)

    return {torch.ops.s2e_export.multi_head_attention.default: multi_head_attention_onnx}


def _multi_head_attention_op():
    """onnxscript's handle on ``com.microsoft::MultiHeadAttention`` (ONNX has no schema for contrib ops)."""
    from onnx.defs import OpSchema
    from onnxscript.values import Op, Opset

    param = OpSchema.FormalParameter
    schema = OpSchema(
        "MultiHeadAttention", "com.microsoft", 1,
        inputs=[param("query", "T"), param("key", "T"), param("value", "T")], outputs=[param("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "activations")],
        attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "")])
    return Op(Opset("com.microsoft", 1), "MultiHeadAttention", schema)


__all__ = ["graph_form", "record_graph_form", "ExportAttentionProduct", "onnxruntime_graph", "multi_head_attention",
           "translation"]
