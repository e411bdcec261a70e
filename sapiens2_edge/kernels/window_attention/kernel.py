"""Triton kernels of the 4K tokenizer. Imported through ``dispatch.kernel_module`` only, so the
module is re-imported when ``TRITON_INTERPRET`` changes (triton.jit decides at decoration time)."""

import triton
import triton.language as tl


@triton.jit
def window_attn_kernel(q_ptr, k_ptr, v_ptr, o_ptr, n_win, seq, head_dim, scale_log2,
                       sq_w, sq_s, sk_w, sk_s, sv_w, sv_s, so_w, so_s,
                       S_PAD: tl.constexpr, BLOCK_D: tl.constexpr, WG: tl.constexpr, DOT_PREC: tl.constexpr):
    """One program = WG windows x one head. q/k/v/o are (windows, seq, C) with unit channel stride;
    head h owns channels [h*d, (h+1)*d). The (S_PAD x S_PAD) scores stay in registers."""
    pid = tl.program_id(0)
    head = tl.program_id(1)
    s = tl.arange(0, S_PAD)
    d = tl.arange(0, BLOCK_D)
    s_ok = s < seq
    col = head * head_dim + d
    tile_ok = s_ok[:, None] & (d < head_dim)[None, :]
    for i in range(WG):
        w = (pid * WG + i).to(tl.int64)
        m = tile_ok & (w < n_win)
        q = tl.load(q_ptr + w * sq_w + s[:, None] * sq_s + col[None, :], mask=m, other=0.0)
        k = tl.load(k_ptr + w * sk_w + s[:, None] * sk_s + col[None, :], mask=m, other=0.0)
        v = tl.load(v_ptr + w * sv_w + s[:, None] * sv_s + col[None, :], mask=m, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale_log2
        scores = tl.where(s_ok[None, :], scores, float("-inf"))
        p = tl.exp2(scores - tl.max(scores, axis=1)[:, None])
        denom = tl.sum(p, axis=1)
        o = tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC) / denom[:, None]
        tl.store(o_ptr + w * so_w + s[:, None] * so_s + col[None, :], o.to(o_ptr.dtype.element_ty), mask=m)


@triton.jit
def window_attn_cls_kernel(q_ptr, k_ptr, v_ptr, o_ptr, n_win, seq, head_dim, scale_log2,
                           sq_w, sk_w, sk_s, sv_w, sv_s, so_w,
                           S_PAD: tl.constexpr, BLOCK_D: tl.constexpr, WG: tl.constexpr):
    """Attention of the CLS query only (the tokenizer keeps token 0 of its last block):
    q and o are (windows, C), k/v (windows, seq, C). Dot products in fp32 on CUDA cores."""
    pid = tl.program_id(0)
    head = tl.program_id(1)
    s = tl.arange(0, S_PAD)
    d = tl.arange(0, BLOCK_D)
    s_ok = s < seq
    d_ok = d < head_dim
    col = head * head_dim + d
    tile_ok = s_ok[:, None] & d_ok[None, :]
    for i in range(WG):
        w = (pid * WG + i).to(tl.int64)
        live = w < n_win
        q = tl.load(q_ptr + w * sq_w + col, mask=d_ok & live, other=0.0).to(tl.float32)
        k = tl.load(k_ptr + w * sk_w + s[:, None] * sk_s + col[None, :], mask=tile_ok & live, other=0.0)
        v = tl.load(v_ptr + w * sv_w + s[:, None] * sv_s + col[None, :], mask=tile_ok & live, other=0.0)
        scores = tl.sum(k.to(tl.float32) * q[None, :], axis=1) * scale_log2
        scores = tl.where(s_ok, scores, float("-inf"))
        p = tl.exp2(scores - tl.max(scores, axis=0))
        o = tl.sum(p[:, None] * v.to(tl.float32), axis=0) / tl.sum(p, axis=0)
        tl.store(o_ptr + w * so_w + col, o.to(o_ptr.dtype.element_ty), mask=d_ok & live)


@triton.jit
def partition_norm_kernel(tok_ptr, cls_ptr, pos_ptr, ln_ptr, x_ptr, h_ptr,
                          channels, wp, win_w, win_per_img, eps,
                          st_b, st_n, st_c, WS: tl.constexpr, SEQ: tl.constexpr, BLOCK_C: tl.constexpr):
    """Row r of the (windows, 1+WS*WS, C) tokenizer input: x = [w_cls | patch] + local_pos_embed
    gathered straight from the row-major (B, Hp*Wp, C) patch tokens, and h = RMSNorm(x) * ln1.
    Any token strides: the patch embedding's (B, C, Hp*Wp) output is read without a transpose copy
    (neighbouring programs read neighbouring patches, so the strided reads hit L2)."""
    row = tl.program_id(0).to(tl.int64)
    win = row // SEQ
    slot = row % SEQ
    img = win // win_per_img
    wy = (win % win_per_img) // win_w
    wx = win % win_w
    local = tl.maximum(slot - 1, 0)
    patch = (wy * WS + local // WS) * wp + wx * WS + local % WS
    c = tl.arange(0, BLOCK_C)
    c_ok = c < channels
    tok = tl.load(tok_ptr + img * st_b + patch * st_n + c * st_c, mask=c_ok & (slot > 0), other=0.0).to(tl.float32)
    cls = tl.load(cls_ptr + c, mask=c_ok & (slot == 0), other=0.0).to(tl.float32)
    pos = tl.load(pos_ptr + slot * channels + c, mask=c_ok, other=0.0).to(tl.float32)
    x = (tok + cls + pos).to(x_ptr.dtype.element_ty)
    tl.store(x_ptr + row * channels + c, x, mask=c_ok)
    xf = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(xf * xf, axis=0) / channels + eps)
    h = xf * inv * tl.load(ln_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    tl.store(h_ptr + row * channels + c, h.to(h_ptr.dtype.element_ty), mask=c_ok)
