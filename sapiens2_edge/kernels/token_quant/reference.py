"""Pure-torch reference of the activation quantization: exactly ``QuantLinear``'s input pass,
:func:`~sapiens2_edge.kernels.numerics.activation_scales` then
:func:`~sapiens2_edge.kernels.numerics.quantize_activation` (what export traces)."""

from __future__ import annotations

import torch

from .. import numerics as nx


def quant_rows_reference(x: torch.Tensor, dtype: str, static_scale: torch.Tensor | None = None,
                         prefix_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., K) -> (q (M, K) int8 / float8_e4m3fn, scale (M, 1) float32), M = rows of x."""
    k = x.shape[-1]
    y = x.float()
    s = nx.activation_scales(y, dtype, static_scale, prefix_tokens)
    return nx.quantize_activation(y.reshape(-1, k), s, dtype), s


__all__ = ["quant_rows_reference"]
