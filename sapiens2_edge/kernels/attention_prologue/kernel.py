"""Triton kernel of the attention prologue. Imported through ``dispatch.kernel_module`` only, so
it is re-imported when ``TRITON_INTERPRET`` changes (triton.jit decides at decoration time)."""

import triton
import triton.language as tl


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
