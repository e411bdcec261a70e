"""Launcher of the attention prologue kernel: checks, output allocation, grid, launch counter."""

from __future__ import annotations

import collections

import torch

from ...errors import InvalidTensorError
from ..dispatch import kernel_module

#: Kernel launches per kernel name; the tests read it to prove the Triton path ran.
LAUNCHES: collections.Counter = collections.Counter()
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_T = 32


def check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor | None,
          k_weight: torch.Tensor | None, sin: torch.Tensor | None, cos: torch.Tensor | None,
          num_heads: int, num_kv_heads: int) -> tuple[int, int, int]:
    """Validate the prologue's inputs; returns (B, T, head_dim)."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise InvalidTensorError(f"attention prologue: q, k, v must be (B, T, heads*d), got {tuple(q.shape)}, "
                                 f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise InvalidTensorError(f"attention prologue: q/k/v dtypes {q.dtype}, {k.dtype}, {v.dtype}; expected one "
                                 "of float32, float16, bfloat16 for all three")
    if num_heads <= 0 or num_kv_heads <= 0 or num_heads % num_kv_heads:
        raise InvalidTensorError(f"attention prologue: {num_kv_heads} kv heads do not divide {num_heads} heads")
    b, t, c = q.shape
    d = c // num_heads
    if c % num_heads or d % 2 or k.shape != (b, t, num_kv_heads * d) or v.shape != k.shape:
        raise InvalidTensorError(f"attention prologue: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                                 f"do not fit {num_heads} q heads and {num_kv_heads} kv heads of even width")
    if (q_weight is None) != (k_weight is None):
        raise InvalidTensorError("attention prologue: give both QK-norm weights or neither")
    if q_weight is not None and (q_weight.numel() != d or k_weight.numel() != d):
        raise InvalidTensorError(f"attention prologue: QK-norm weights {tuple(q_weight.shape)}, "
                                 f"{tuple(k_weight.shape)} do not match head width {d}")
    if (sin is None) != (cos is None):
        raise InvalidTensorError("attention prologue: give both RoPE tables or neither")
    if sin is not None and (sin.shape != cos.shape or sin.dim() != 2 or sin.shape[1] != d or sin.shape[0] > t):
        raise InvalidTensorError(f"attention prologue: RoPE tables {tuple(sin.shape)}, {tuple(cos.shape)} must be "
                                 f"(rows <= {t}, {d})")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.stride(-1) != 1:
            raise InvalidTensorError(f"attention prologue: {name} needs unit stride on its channel dimension")
    return b, t, d


def attention_prologue(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor | None,
                       k_weight: torch.Tensor | None, sin: torch.Tensor | None, cos: torch.Tensor | None,
                       num_heads: int, num_kv_heads: int, eps: float, round_bf16: bool,
                       expand_kv: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton prologue: q (B, T, H*d), k/v (B, T, KV*d) projections -> contiguous SDPA inputs
    q (B, H, T, d), k/v (B, KV or H, T, d), with QK-RMSNorm, RoPE on the last len(sin) tokens."""
    b, t, d = check(q, k, v, q_weight, k_weight, sin, cos, num_heads, num_kv_heads)
    kv_out = num_heads if expand_kv else num_kv_heads
    group = num_heads // num_kv_heads if expand_kv else 1
    qo = torch.empty(b, num_heads, t, d, dtype=q.dtype, device=q.device)
    ko = torch.empty(b, kv_out, t, d, dtype=q.dtype, device=q.device)
    vo = torch.empty_like(ko)
    if b * t == 0:
        return qo, ko, vo
    norm, rope = q_weight is not None, sin is not None
    if rope:
        sin, cos = sin.float().contiguous(), cos.float().contiguous()
    prefix = t - sin.shape[0] if rope else 0
    grid = (-(-t // BLOCK_T), b * (num_heads + 2 * kv_out))
    LAUNCHES["attention_prologue"] += 1
    kernel_module(__package__ + ".kernel").prologue_kernel[grid](
        q, k, v, q_weight if norm else q, k_weight if norm else k, sin if rope else q, cos if rope else q,
        qo, ko, vo, t, prefix, d, num_heads, kv_out, group, eps,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        NORM=norm, ROPE=rope, ROUND=rope and round_bf16, BLOCK_T=BLOCK_T,
        BLOCK_H=max(1 << (d // 2 - 1).bit_length(), 2))
    return qo, ko, vo
