"""What the manifest says of a quantized export (``manifest.quantization.export``): how each kind of
quantized layer was written into the graph, and the graph forms chosen for the runtime."""

from __future__ import annotations

from torch import nn

from ..quantization.attention_inputs import quantized_attentions
from ..quantization.linear import QuantLinear
from .onnx_quant import int8_dot_products, needed_opset
from .prefix_split import rows_apart

NOTES = {
    "attention/int8": "int8 attention inputs: Clip(+-127 s) -> QuantizeLinear/DequantizeLinear (int8, zero point 0) "
                      "on q, k and v of each attention with their calibrated per-tensor scales (OpenVINO: FakeQuantize "
                      "on its fused attention's inputs, int8 attention products)",
    "int8-weight/none": "int8 weight initializers, per-channel DequantizeLinear(axis=1) -> MatMul, float activations",
    "int4-weight/none": "int4 weights as com.microsoft MatMulNBits (bits 4, block_size = group size, zero point 8, "
                        "accuracy_level 1): our packed nibbles and float16 group scales (as float32), float activations",
    "int8/static": "static activations: Clip(+-127 s) -> QuantizeLinear/DequantizeLinear (uint8, zero point 128 = the "
                   "recipe's symmetric int8) on the patch tokens with the calibrated scale, our int8 weights as uint8 + "
                   "128 with zero point 128 (exact on CPUs without VNNI, where u8 x s8 saturates); the prefix tokens keep "
                   "their per-token scale (rows scaled by s/s_token before Q/DQ and by s_token/s after), as in the "
                   "recipe",
    "prefix/apart": "OpenVINO graph: each static int8 FFN linear of the encoder runs its prefix tokens' rows as a GEMM of "
                    "their own (per-token scales) and the patch rows as a second GEMM over the same int8 weights (the "
                    "static scale alone), so the bias and the element-wise ops after it fuse into the patch rows' GEMM",
    "int8/dynamic": "dynamic per-token activations have no QDQ form (QuantizeLinear takes constant or per-tensor "
                    "scales; DynamicQuantizeLinear is per tensor): exported exactly as ReduceMax(Abs)/127 -> Round "
                    "-> Clip -> uint8 (+128) -> MatMulInteger(our int8 weights as uint8 + 128, zero point 128) -> scales",
    "fp8/static": "FLOAT8E4M3FN weights + per-channel DQ; static activations Q/DQ FLOAT8E4M3FN per tensor (TensorRT "
                  "builds fp8 GEMMs from this); prefix tokens rescaled onto the static grid per token",
    "fp8/dynamic": "FLOAT8E4M3FN weights + per-channel DQ; dynamic per-token activations by exact Cast(E4M3, "
                   "saturate) emulation (no QDQ form; TensorRT runs these GEMMs from the dequantized weights)",
}


def describe(model: nn.Module, fmt: str, opset: int) -> dict:
    """How the quantized layers were written (manifest.quantization.export)."""
    kinds: dict[str, int] = {}
    apart, signed = 0, fmt == "openvino" and int8_dot_products()[0]
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            d = m.decompose()
            kinds[d.kind] = kinds.get(d.kind, 0) + 1
            apart += rows_apart(name, d.weight_dtype, d.act_mode, d.prefix_tokens, signed)
    out = {"format": fmt, "opset": needed_opset(model, opset), "layers": kinds,
           "notes": [NOTES[k] for k in kinds if k in NOTES]}
    if apart:
        out["prefix_rows_apart"] = apart
        out["notes"].append(NOTES["prefix/apart"])
    attentions = len(quantized_attentions(model))
    if attentions:
        out["attention_inputs"] = {"int8": attentions}
        out["notes"].append(NOTES["attention/int8"])
    if any(k.startswith("fp8") for k in kinds):
        out["target"] = ("TensorRT (FLOAT8E4M3FN Q/DQ, opset >= 19); ONNX Runtime CPU runs the graph through "
                         "float dequantization, for verification only")
    return out


__all__ = ["NOTES", "describe"]
