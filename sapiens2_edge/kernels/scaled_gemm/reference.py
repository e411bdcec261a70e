"""Pure-torch references of the scaled GEMM, in ``QuantLinear``'s exact arithmetic: int32
accumulation of int8 (``torch._int_mm`` where the shape allows, the exact emulation elsewhere),
E4M3 values multiplied in float32 (they are exact in it), then the fp32 epilogue."""

from __future__ import annotations

import torch

from .. import numerics as nx


def int8_accumulate_reference(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exact int32 ``a @ w.T`` for int8 a (M, K), w (N, K)."""
    return nx.int8_matmul_reference(a, w)


def dequant_epilogue(acc: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                     out_dtype: torch.dtype) -> torch.Tensor:
    """``acc * (s_a * s_w) + bias`` in float32, then one cast: the order ``QuantLinear`` uses."""
    y = acc.float() * (a_scale.reshape(-1, 1).float() * w_scale.reshape(1, -1).float())
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def int8_gemm_reference(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
                        bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """int8 a (M, K) with per-row scales (M, 1), int8 w (N, K) with per-channel (N,) or per-tensor
    (1,) scales, float32 bias (N,) -> (M, N) in ``out_dtype``. The int32 accumulation uses
    ``torch._int_mm`` where the shape allows and the exact emulation elsewhere (bit-identical)."""
    return dequant_epilogue(nx.int8_matmul(a, w), a_scale, w_scale, bias, out_dtype)


def fp8_gemm_reference(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
                       bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """float8_e4m3fn a (M, K) with per-row scales, float8_e4m3fn w (N, K) with per-channel or
    per-tensor scales, float32 bias (N,) -> (M, N) in ``out_dtype``."""
    return dequant_epilogue(a.float() @ w.float().t(), a_scale, w_scale, bias, out_dtype)


__all__ = ["int8_gemm_reference", "int8_accumulate_reference", "fp8_gemm_reference", "dequant_epilogue"]
