"""Pure-torch reference of the fused RMSNorm + activation quantization (what export traces).

Exactly the unfused path: ``F.rms_norm`` in float32 (the norm weight already carries the
SmoothQuant factor ``1 / s`` when SmoothQuant ran: :func:`~sapiens2_edge.quantization.smoothquant.
apply_smoothing` folds it in), then :func:`~sapiens2_edge.quantization.numerics.activation_scales`
and :func:`~sapiens2_edge.quantization.numerics.quantize_activation` as in ``QuantLinear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...quantization import numerics as nx


def quant_rows_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float, dtype: str,
                         static_scale: torch.Tensor | None = None,
                         prefix_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., K) -> (q (M, K) int8 / float8_e4m3fn, scale (M, 1) float32), M = rows of x."""
    k = x.shape[-1]
    y = x.float()
    if weight is not None:
        y = F.rms_norm(y, (k,), weight.float(), eps)
    s = nx.activation_scales(y, dtype, static_scale, prefix_tokens)
    return nx.quantize_activation(y.reshape(-1, k), s, dtype), s


__all__ = ["quant_rows_reference"]
