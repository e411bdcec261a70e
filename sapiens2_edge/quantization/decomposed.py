"""The export form of one quantized linear: plain tensors, and its arithmetic in plain torch ops.

Every exporter starts from :meth:`QuantLinear.decompose` and only maps this form to its own
format's ops (ONNX Q/DQ in ``exporters/onnx_quant.py``, Core ML quantization ops in
``exporters/coreml_linear.py``, the native engine's weight-only layout in
``exporters/native_export.py``)::

    y = A(x) @ (weight * weight_scale[:, None]).T + bias

``weight`` is the stored (N, K) int8 / float8_e4m3fn / float16 tensor, ``weight_scale`` its
float32 scale, (N,) per output channel or (1,) per tensor (None for fp16). int4 weights are
packed: ``weight`` (N, K/2) uint8 nibbles ``q + 8`` (see :func:`~..kernels.numerics.pack_int4`),
``weight_scale`` (N, K/G) float16, one per group of G inputs, and the formula reads the unpacked
``q`` times each element's group scale. ``A`` is the identity
for weight-only layers (``act_dtype`` None); otherwise a quantize -> dequantize of the input to
``act_dtype``: per token (``dynamic``), or with the calibrated ``input_scale`` (``static``) except
for the first ``prefix_tokens`` tokens of each sequence, which keep a per-token scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels import numerics as nx


@dataclass(frozen=True)
class DecomposedLinear:
    weight: torch.Tensor
    weight_scale: torch.Tensor | None
    bias: torch.Tensor | None
    weight_dtype: str  # int8 | int4 | fp8 | fp16
    act_dtype: str | None = None  # None: float activations (weight-only)
    act_mode: str = "none"  # none | dynamic | static
    input_scale: torch.Tensor | None = None  # () float32, static only
    prefix_tokens: int = 0  # static only

    @property
    def kind(self) -> str:
        """``int8-weight/none``, ``int8/static``, ``fp8/dynamic``, ``fp16-weight``, ..."""
        if self.weight_dtype == "fp16":
            return "fp16-weight"
        return f"{self.weight_dtype}{'-weight' if self.act_dtype is None else ''}/{self.act_mode}"

    @property
    def group_size(self) -> int | None:
        """Inputs per scale of an int4 weight (None for the others)."""
        if self.weight_dtype != "int4":
            return None
        return self.weight.shape[1] * 2 // self.weight_scale.shape[1]

    @property
    def per_channel(self) -> bool:
        return self.weight_scale is not None and self.weight_scale.numel() > 1

    def channel_scales(self) -> torch.Tensor:
        """The weight scale as (N,) float32 (a per-tensor scale repeated)."""
        return self.weight_scale.float().reshape(-1).expand(self.weight.shape[0]).contiguous()

    def dequantized_weight(self) -> torch.Tensor:
        return nx.dequantize_weight(self.weight, self.weight_scale)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """``A(x)``: the input as the quantized GEMM sees it, dequantized to float32."""
        if self.act_dtype is None:
            return x.float()
        k = x.shape[-1]
        s = nx.activation_scales(x, self.act_dtype, self.input_scale, self.prefix_tokens)
        return (nx.quantize_activation(x.reshape(-1, k).float(), s, self.act_dtype).float() * s).reshape(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """What every exported form computes (to float rounding; QuantLinear's own forward)."""
        y = self.quantize_input(x) @ self.dequantized_weight().t()
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)


def fake_quantize_tokens(x: torch.Tensor) -> torch.Tensor:
    """Per-token symmetric int8 quantize -> dequantize in float ops only (no integer tensors), as
    formats without a per-token quantization op write it."""
    s = torch.clamp(x.abs().amax(dim=-1, keepdim=True) / nx.INT8_MAX, min=nx.EPS_SCALE)
    return torch.clamp(torch.round(x / s), -nx.INT8_MAX, nx.INT8_MAX) * s


__all__ = ["DecomposedLinear", "fake_quantize_tokens"]
