"""Launchers of the tokenizer kernels: shape checks, grids, block sizes, launch counters."""

from __future__ import annotations

import collections
import math

import torch

from ...errors import InvalidTensorError
from ..dispatch import kernel_module

#: Kernel launches per kernel name; the tests read it to prove the Triton path ran.
LAUNCHES: collections.Counter = collections.Counter()
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_SEQ = 128
WINDOWS_PER_PROGRAM = 4


def _kernels():
    return kernel_module(__package__ + ".kernel")


def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, 1 << (n - 1).bit_length())


def _check(name: str, t: torch.Tensor, ndim: int, dtype: torch.dtype | None = None, strided: bool = False) -> None:
    if t.dim() != ndim:
        raise InvalidTensorError(f"window attention: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in DTYPES:
        raise InvalidTensorError(f"window attention: {name} has dtype {t.dtype}; expected float32, float16 or bfloat16")
    if dtype is not None and t.dtype != dtype:
        raise InvalidTensorError(f"window attention: {name} has dtype {t.dtype} but q has {dtype}")
    if t.stride(-1) != 1 and not strided:
        raise InvalidTensorError(f"window attention: {name} needs unit stride on its channel dimension")


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, q_ndim: int) -> tuple[int, int, int]:
    _check("q", q, q_ndim)
    _check("k", k, 3, q.dtype)
    _check("v", v, 3, q.dtype)
    n, s, c = k.shape
    if v.shape != k.shape or q.shape[0] != n or q.shape[-1] != c or (q_ndim == 3 and q.shape[1] != s):
        raise InvalidTensorError(f"window attention: q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} "
                                 "do not match")
    if num_heads <= 0 or c % num_heads:
        raise InvalidTensorError(f"window attention: {c} channels do not split into {num_heads} heads")
    if not 0 < s <= MAX_SEQ:
        raise InvalidTensorError(f"window attention: window length {s} is outside 1..{MAX_SEQ}")
    return n, s, c // num_heads


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Triton window attention: (windows, S, C) q/k/v (any strides, unit channel stride) ->
    contiguous (windows, S, C), the layout the output projection reads."""
    n, s, d = _check_qkv(q, k, v, num_heads, 3)
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if n == 0:
        return o
    grid = (triton_cdiv(n, WINDOWS_PER_PROGRAM), num_heads)
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    LAUNCHES["window_attention"] += 1
    _kernels().window_attn_kernel[grid](
        q, k, v, o, n, s, d, math.log2(math.e) / math.sqrt(d),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), o.stride(0), o.stride(1),
        S_PAD=_pow2(s), BLOCK_D=_pow2(d), WG=WINDOWS_PER_PROGRAM, DOT_PREC=prec)
    return o


def window_attention_cls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Triton attention of the CLS query only: q (windows, C), k/v (windows, S, C) -> (windows, C)."""
    n, s, d = _check_qkv(q, k, v, num_heads, 2)
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if n == 0:
        return o
    grid = (triton_cdiv(n, WINDOWS_PER_PROGRAM), num_heads)
    LAUNCHES["window_attention_cls"] += 1
    _kernels().window_attn_cls_kernel[grid](
        q, k, v, o, n, s, d, math.log2(math.e) / math.sqrt(d),
        q.stride(0), k.stride(0), k.stride(1), v.stride(0), v.stride(1), o.stride(0),
        S_PAD=_pow2(s, 1), BLOCK_D=_pow2(d, 1), WG=WINDOWS_PER_PROGRAM)
    return o


def window_partition_norm(tokens: torch.Tensor, w_cls: torch.Tensor, pos: torch.Tensor, ln_weight: torch.Tensor,
                          hp: int, wp: int, ws: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton gather of the tokenizer input and its first RMSNorm, one pass over the patch tokens."""
    _check("tokens", tokens, 3, strided=True)
    b, npatch, c = tokens.shape
    seq = ws * ws + 1
    if npatch != hp * wp or hp % ws or wp % ws:
        raise InvalidTensorError(f"window partition: {npatch} tokens for a {hp}x{wp} grid that must divide into "
                                 f"{ws}x{ws} windows")
    if w_cls.numel() != c or pos.numel() != seq * c or ln_weight.numel() != c:
        raise InvalidTensorError(f"window partition: w_cls {tuple(w_cls.shape)}, pos {tuple(pos.shape)} and ln1 "
                                 f"{tuple(ln_weight.shape)} do not fit {c} channels and {seq}-token windows")
    n = b * (hp // ws) * (wp // ws)
    x = torch.empty(n, seq, c, dtype=tokens.dtype, device=tokens.device)
    h = torch.empty_like(x)
    if n == 0:
        return x, h
    LAUNCHES["window_partition_norm"] += 1
    _kernels().partition_norm_kernel[(n * seq,)](
        tokens, w_cls.contiguous(), pos.contiguous(), ln_weight.contiguous(), x, h,
        c, wp, wp // ws, (hp // ws) * (wp // ws), eps, tokens.stride(0), tokens.stride(1), tokens.stride(2),
        WS=ws, SEQ=seq, BLOCK_C=_pow2(c, 1))
    return x, h


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
