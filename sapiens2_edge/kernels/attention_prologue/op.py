"""Main-encoder attention prologue in one pass: QK-RMSNorm + 2-D RoPE (skipping the prefix
tokens, with the reference's bf16 rounding) + GQA head mapping, emitting SDPA-ready q/k/v.

The Triton kernel, its launcher (checks, grid), the ``sapiens2_edge::attention_prologue`` custom op
(with a fake kernel for torch.compile / torch.export) and :func:`attention_prologue`, which picks
the op or the pure-torch reference (:mod:`.reference`).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ...errors import InvalidTensorError
from .. import switch
from .._jit import LAUNCHES
from . import reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_T = 32

@triton.jit
def _round_bf16(x):
    """Round float32 to the nearest bf16 (ties to even), kept in float32. Integer arithmetic, so the
    interpreter (which truncates on casts) and the GPU agree bit for bit."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16  # shifts keep it uint32 (no 64-bit mask literal)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _to_dtype(x, like_ptr):
    """Round float32 x to like_ptr's element type and back (what storing an intermediate in the
    working dtype does)."""
    if like_ptr.dtype.element_ty == tl.bfloat16:
        x = _round_bf16(x)
    elif like_ptr.dtype.element_ty == tl.float16:
        x = x.to(tl.float16).to(tl.float32)
    return x


@triton.jit
def _head_tile(src, s_b, s_t, src_head, dst, dst_head, w_ptr, sin_ptr, cos_ptr,
               b, t0, seq, n_heads_out, prefix, head_dim, eps,
               NORM: tl.constexpr, ROPE: tl.constexpr, ROUND: tl.constexpr,
               BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    """BLOCK_T tokens of one head: load from (B, T, heads*d), RMSNorm over d, rotate, store to
    (B, heads_out, T, d). The head is handled as two halves [u | w]: RoPE pairs j with j + d/2."""
    t = t0 + tl.arange(0, BLOCK_T)
    j = tl.arange(0, BLOCK_H)
    half = head_dim // 2
    ok = (t < seq)[:, None] & (j < half)[None, :]
    base = src + b.to(tl.int64) * s_b + t[:, None].to(tl.int64) * s_t + src_head * head_dim + j[None, :]
    u = tl.load(base, mask=ok, other=0.0).to(tl.float32)
    w = tl.load(base + half, mask=ok, other=0.0).to(tl.float32)
    if NORM:
        inv = tl.rsqrt((tl.sum(u * u, axis=1) + tl.sum(w * w, axis=1)) / head_dim + eps)
        gu = tl.load(w_ptr + j, mask=j < half, other=0.0).to(tl.float32)
        gw = tl.load(w_ptr + half + j, mask=j < half, other=0.0).to(tl.float32)
        u = _to_dtype(u * inv[:, None] * gu[None, :], dst)
        w = _to_dtype(w * inv[:, None] * gw[None, :], dst)
    if ROPE:
        if ROUND:
            u = _round_bf16(u)
            w = _round_bf16(w)
        # Prefix rows load cos = 1, sin = 0, which leaves them unrotated (and exactly unchanged).
        row = (t - prefix)[:, None] * head_dim + j[None, :]
        body = ok & (t >= prefix)[:, None]
        cu = tl.load(cos_ptr + row, mask=body, other=1.0)
        cw = tl.load(cos_ptr + row + half, mask=body, other=1.0)
        su = tl.load(sin_ptr + row, mask=body, other=0.0)
        sw = tl.load(sin_ptr + row + half, mask=body, other=0.0)
        if ROUND:
            u2 = _round_bf16(_round_bf16(u * cu) - _round_bf16(w * su))
            w = _round_bf16(_round_bf16(w * cw) + _round_bf16(u * sw))
        else:
            u2 = u * cu - w * su
            w = w * cw + u * sw
        u = u2
    out = dst + ((b.to(tl.int64) * n_heads_out + dst_head) * seq + t[:, None]) * head_dim + j[None, :]
    tl.store(out, u.to(dst.dtype.element_ty), mask=ok)
    tl.store(out + half, w.to(dst.dtype.element_ty), mask=ok)


@triton.jit
def prologue_kernel(q_ptr, k_ptr, v_ptr, qw_ptr, kw_ptr, sin_ptr, cos_ptr, qo_ptr, ko_ptr, vo_ptr,
                    seq, prefix, head_dim, n_heads, n_kv_out, kv_group, eps,
                    sq_b, sq_t, sk_b, sk_t, sv_b, sv_t,
                    NORM: tl.constexpr, ROPE: tl.constexpr, ROUND: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    """Grid (token blocks, B * (heads + 2 * kv_out)): slot < heads is a q head; then the k heads,
    then the v heads (copied into the SDPA layout). kv head n reads source head n // kv_group
    (kv_group > 1 expands GQA into MHA)."""
    t0 = tl.program_id(0) * BLOCK_T
    slots = n_heads + 2 * n_kv_out
    b = tl.program_id(1) // slots
    slot = tl.program_id(1) % slots
    if slot < n_heads:
        _head_tile(q_ptr, sq_b, sq_t, slot, qo_ptr, slot, qw_ptr, sin_ptr, cos_ptr, b, t0, seq, n_heads, prefix,
                   head_dim, eps, NORM, ROPE, ROUND, BLOCK_T, BLOCK_H)
    elif slot < n_heads + n_kv_out:
        kv = slot - n_heads
        _head_tile(k_ptr, sk_b, sk_t, kv // kv_group, ko_ptr, kv, kw_ptr, sin_ptr, cos_ptr, b, t0, seq, n_kv_out,
                   prefix, head_dim, eps, NORM, ROPE, ROUND, BLOCK_T, BLOCK_H)
    else:
        kv = slot - n_heads - n_kv_out
        _head_tile(v_ptr, sv_b, sv_t, kv // kv_group, vo_ptr, kv, kw_ptr, sin_ptr, cos_ptr, b, t0, seq, n_kv_out,
                   prefix, head_dim, eps, False, False, False, BLOCK_T, BLOCK_H)


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


def launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor | None,
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
    prologue_kernel[grid](
        q, k, v, q_weight if norm else q, k_weight if norm else k, sin if rope else q, cos if rope else q,
        qo, ko, vo, t, prefix, d, num_heads, kv_out, group, eps,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        NORM=norm, ROPE=rope, ROUND=rope and round_bf16, BLOCK_T=BLOCK_T,
        BLOCK_H=max(1 << (d // 2 - 1).bit_length(), 2))
    return qo, ko, vo


@torch.library.custom_op("sapiens2_edge::attention_prologue", mutates_args=())
def attention_prologue_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: Optional[torch.Tensor],
                          k_weight: Optional[torch.Tensor], sin: Optional[torch.Tensor], cos: Optional[torch.Tensor],
                          num_heads: int, num_kv_heads: int, eps: float, round_bf16: bool,
                          expand_kv: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    impl = launch if switch.use_triton(q.device.type) else reference.attention_prologue
    return impl(q, k, v, q_weight, k_weight, sin, cos, num_heads, num_kv_heads, eps, round_bf16, expand_kv)


@attention_prologue_op.register_fake
def _(q, k, v, q_weight, k_weight, sin, cos, num_heads, num_kv_heads, eps, round_bf16, expand_kv):
    b, t, c = q.shape
    d = c // num_heads
    kv = num_heads if expand_kv else num_kv_heads
    return q.new_empty(b, num_heads, t, d), q.new_empty(b, kv, t, d), q.new_empty(b, kv, t, d)


def attention_prologue(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor | None,
                       k_weight: torch.Tensor | None, sin: torch.Tensor | None, cos: torch.Tensor | None,
                       num_heads: int, num_kv_heads: int, eps: float = 1e-6, round_bf16: bool = True,
                       expand_kv: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projections q (B, T, H*d), k/v (B, T, KV*d) -> SDPA inputs (B, heads, T, d): QK-RMSNorm (if
    weights are given), RoPE on the last ``len(sin)`` tokens (bf16-rounded like the reference if
    ``round_bf16``), kv heads repeated to H if ``expand_kv``. Custom op where kernels are on."""
    args = (q, k, v, q_weight, k_weight, sin, cos, num_heads, num_kv_heads, eps, round_bf16, expand_kv)
    if switch.enabled(q):
        return attention_prologue_op(*args)
    return reference.attention_prologue(*args)
