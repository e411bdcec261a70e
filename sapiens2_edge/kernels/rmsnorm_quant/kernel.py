"""Triton row kernel: optional RMSNorm, then per-token (or static) quantization to int8 / E4M3.

One program per row: the row is read once into registers (fp32), normalised, its absmax taken,
and the quantized bytes and the row's float32 scale written, so activation quantization costs
no pass of its own. Rounding follows :mod:`sapiens2_edge.quantization.numerics` exactly: IEEE
division by the scale, round-half-to-even, int8 clamped to [-127, 127], E4M3 saturated at 448.
The E4M3 rounding is done in fp32 arithmetic (the value comes out exactly representable before
the cast), which is exact on every GPU and under the interpreter, whose own fp8 cast is wrong.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..int8_gemm._jit import LazyJit


def _quant_rows(x_ptr, w_ptr, q_ptr, s_ptr, static_ptr, K, stride_x, stride_q, seq_len, prefix, eps,
                NORM: tl.constexpr, STATIC: tl.constexpr, IS_FP8: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    inside = cols < K
    x = tl.load(x_ptr + row * stride_x + cols, mask=inside, other=0.0).to(tl.float32)
    if NORM:
        ms = tl.sum(x * x, axis=0) / K
        x = x * (1.0 / tl.sqrt_rn(ms + eps)) * tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    # (v + 1.5 * 2**23) - 1.5 * 2**23 rounds |v| < 2**22 to the nearest integer, ties to even
    if IS_FP8:
        qmax = 448.0
    else:
        qmax = 127.0
    dyn = tl.div_rn(tl.max(tl.abs(x), axis=0), qmax)
    dyn = tl.where(dyn > 0, dyn, 1e-12)
    if STATIC:
        static = tl.load(static_ptr)
        scale = tl.where((row % seq_len) < prefix, dyn, static)
    else:
        scale = dyn
    v = tl.minimum(tl.maximum(tl.div_rn(x, scale), -qmax), qmax)
    if IS_FP8:
        # E4M3 step at |v|: 2**(e - 3) for the binade 2**e, floored at the subnormal step 2**-9
        a = tl.abs(v)
        e = tl.maximum((a.to(tl.int32, bitcast=True) >> 23) - 127, -6)
        step = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)
        inv_step = ((3 - e + 127) << 23).to(tl.float32, bitcast=True)
        r = ((a * inv_step + 12582912.0) - 12582912.0) * step
        sign = (v.to(tl.int32, bitcast=True) >> 31) << 31
        r = (r.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)
        q = r.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    else:
        q = ((v + 12582912.0) - 12582912.0).to(tl.int8)
    tl.store(q_ptr + row * stride_q + cols, q, mask=inside)
    tl.store(s_ptr + row, scale)


_KERNEL = LazyJit(_quant_rows, "rmsnorm_quant")


def launch_quant_rows(x2: torch.Tensor, weight: torch.Tensor | None, eps: float, dtype: str,
                      static_scale: torch.Tensor | None, prefix_tokens: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 (M, K) float, contiguous rows -> (q (M, K) int8 / float8_e4m3fn, scale (M, 1) float32)."""
    m, k = x2.shape
    fp8 = dtype == "fp8"
    q = torch.empty(m, k, dtype=torch.uint8 if fp8 else torch.int8, device=x2.device)
    s = torch.empty(m, 1, dtype=torch.float32, device=x2.device)
    if m:
        block = triton.next_power_of_2(k)
        dummy = s.new_empty(1)
        args = (x2, weight if weight is not None else dummy, q, s,
                static_scale.reshape(1).float() if static_scale is not None else dummy,
                k, x2.stride(0), q.stride(0), max(seq_len, 1), prefix_tokens, eps)
        warps = 4 if block <= 2048 else (8 if block <= 8192 else 16)
        _KERNEL.launch(lambda _m: (m,), args, {}, NORM=weight is not None, STATIC=static_scale is not None,
                       IS_FP8=fp8, BLOCK_K=block, num_warps=warps)
    return (q.view(torch.float8_e4m3fn) if fp8 else q), s
