"""Per-token (or static) quantization of activations to int8 / E4M3 in one pass: the Triton row
kernel, its launcher, the ``sapiens2_edge::quant_rows`` custom op (with a fake kernel for
torch.compile / torch.export) and :func:`per_token_quant`, which checks its inputs.

One program per row: the row is read once into registers (fp32), its absmax taken, and the
quantized bytes and the row's float32 scale written. Rounding follows
:mod:`sapiens2_edge.kernels.numerics` exactly: IEEE division by the scale, round-half-to-even,
int8 clamped to [-127, 127], E4M3 saturated at 448. The E4M3 rounding is done in fp32 arithmetic
(the value comes out exactly representable before the cast), which is exact on every GPU and
under the interpreter, whose own fp8 cast is wrong.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...errors import ConfigError, InvalidTensorError
from .. import switch
from .._jit import LAUNCHES
from .reference import quant_rows_reference

QDTYPES = ("int8", "fp8")
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _quant_rows(x_ptr, q_ptr, s_ptr, static_ptr, K, stride_x, stride_q, seq_len, prefix,
                STATIC: tl.constexpr, IS_FP8: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    inside = cols < K
    x = tl.load(x_ptr + row * stride_x + cols, mask=inside, other=0.0).to(tl.float32)
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


_KERNEL = triton.jit(_quant_rows)


def launch_quant_rows(x2: torch.Tensor, dtype: str, static_scale: torch.Tensor | None, prefix_tokens: int,
                      seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 (M, K) float, contiguous rows -> (q (M, K) int8 / float8_e4m3fn, scale (M, 1) float32)."""
    m, k = x2.shape
    fp8 = dtype == "fp8"
    q = torch.empty(m, k, dtype=torch.uint8 if fp8 else torch.int8, device=x2.device)
    s = torch.empty(m, 1, dtype=torch.float32, device=x2.device)
    if m:
        block = triton.next_power_of_2(k)
        static = static_scale.reshape(1).float() if static_scale is not None else s.new_empty(1)
        LAUNCHES["token_quant"] += 1
        _KERNEL[(m,)](x2, q, s, static, k, x2.stride(0), q.stride(0), max(seq_len, 1), prefix_tokens,
                      STATIC=static_scale is not None, IS_FP8=fp8, BLOCK_K=block,
                      num_warps=4 if block <= 2048 else (8 if block <= 8192 else 16))
    return (q.view(torch.float8_e4m3fn) if fp8 else q), s


@torch.library.custom_op("sapiens2_edge::quant_rows", mutates_args=())
def quant_rows(x: torch.Tensor, dtype: str, static_scale: torch.Tensor | None,
               prefix_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    if switch.use_triton(x.device.type):
        seq_len = x.shape[1] if x.ndim == 3 else 1
        prefix = prefix_tokens if x.ndim == 3 and static_scale is not None else 0
        return launch_quant_rows(x.reshape(-1, x.shape[-1]).contiguous(), dtype, static_scale, prefix, seq_len)
    return quant_rows_reference(x, dtype, static_scale, prefix_tokens)


@quant_rows.register_fake
def _(x, dtype, static_scale, prefix_tokens):
    k = x.shape[-1]
    qd = torch.int8 if dtype == "int8" else torch.float8_e4m3fn
    return x.new_empty(x.numel() // k, k, dtype=qd), x.new_empty(x.numel() // k, 1, dtype=torch.float32)


def per_token_quant(x: torch.Tensor, dtype: str = "int8", static_scale: torch.Tensor | None = None,
                    prefix_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., K) quantized per token (or with ``static_scale``, the first ``prefix_tokens`` tokens
    of each sequence of a (B, T, K) input keeping their own dynamic scale): what ``QuantLinear``
    does to its input. Returns (q (M, K), scale (M, 1) float32) with ``q * scale ~= x``."""
    if dtype not in QDTYPES:
        raise ConfigError(f"quantized dtype {dtype!r} is not supported; expected one of {', '.join(QDTYPES)}")
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.dtype not in _FLOATS or x.shape[-1] == 0:
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidTensorError(f"expected a float32/float16/bfloat16 tensor (..., K) with K > 0, got {got}")
    if static_scale is not None and static_scale.numel() != 1:
        raise InvalidTensorError(f"static_scale must hold one value (a per-tensor scale), got shape "
                                 f"{tuple(static_scale.shape)}")
    return quant_rows(x, dtype, static_scale, int(prefix_tokens))


__all__ = ["quant_rows", "per_token_quant", "launch_quant_rows", "LAUNCHES", "QDTYPES"]
