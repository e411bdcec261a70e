"""Pure-torch reference of the FP8 E4M3 rowwise GEMM: the E4M3 values are exact in float32, so
the reference multiplies them in float32 and applies the scales and bias as ``QuantLinear`` does."""

from __future__ import annotations

import torch

from ..int8_gemm.reference import dequant_epilogue


def fp8_gemm_reference(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
                       bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """float8_e4m3fn a (M, K) with per-row scales, float8_e4m3fn w (N, K) with per-channel or
    per-tensor scales, float32 bias (N,) -> (M, N) in ``out_dtype``."""
    return dequant_epilogue(a.float() @ w.float().t(), a_scale, w_scale, bias, out_dtype)


__all__ = ["fp8_gemm_reference"]
