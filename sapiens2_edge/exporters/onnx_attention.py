"""The attention product of an ONNX graph made for ONNX Runtime: one ``com.microsoft`` ``MultiHeadAttention``.

The exporter writes ``scaled_dot_product_attention`` as Transpose -> MatMul -> Softmax -> MatMul, and
ONNX Runtime's CPU provider runs that as written: every head's (T, T) scores are materialised, twice
(the MatMul's output and the Softmax's), 2 x 607 MB per block at 0.4b 1024x768. ONNX Runtime's own
``MultiHeadAttention`` contrib operator (Q, K, V as (B, T, heads x d)) runs the same product on MLAS'
flash-attention kernel on CPU (blocks of scores sized to the L2 cache, an online softmax) and on its
fused kernels on CUDA: on a 2-core AVX2 EPYC one 0.4b attention took 0.26 s and 187 MB instead of
0.32 s and 774 MB, same values to 1e-6 (``benchmarks/results/cpu_peers.md``). ONNX's standard
``Attention`` (opset 23) materialises the scores in ONNX Runtime 1.32 (0.34 s, 762 MB) and would tie
the graph to opset 23.

The operator is ONNX Runtime's (OpenVINO's ONNX reader takes it too); a graph for another ONNX runtime
(TensorRT on its own) is exported with ``attention_op="standard"``, which keeps the standard operators.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..artifact.formats import ONNX_ATTENTION
from ..errors import ConfigError
from .onnx_quant import NAMESPACE, has_fp8_layers, swapped_modules

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


def attention_form(model: nn.Module, form: str) -> str:
    """The form an ``attention_op`` asks for: "auto" is "onnxruntime", or "standard" for a graph with fp8
    layers (its runtime is TensorRT, whose ONNX parser has no contrib operators)."""
    if form not in ONNX_ATTENTION:
        raise ConfigError(f"ONNX attention {form!r} is not supported; expected one of {', '.join(ONNX_ATTENTION)}")
    if form != "auto":
        return form
    return "standard" if has_fp8_layers(model) else "onnxruntime"


def fused_attention(model: nn.Module, form: str):
    """For the duration, every attention of ``model`` computes its product as one
    ``multi_head_attention`` (form "onnxruntime"); "standard" leaves the model as it is. Yields how many."""
    from ..models.backbone import Attention

    if form == "standard":
        return contextlib.nullcontext(0)
    found = {f"{n}.{SLOT}": None for n, m in model.named_modules() if isinstance(m, Attention)}
    return swapped_modules(model, found, lambda _: ExportAttentionProduct())


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


__all__ = ["attention_form", "ExportAttentionProduct", "fused_attention", "multi_head_attention",
           "translation"]
