"""Fused window attention for the 4K tokenizer: attention over 17-token windows, attention of the
CLS query only, and the gather of the windows fused with the first block's RMSNorm.

The Triton kernels, their launchers (shape checks, grids, block sizes), the ``torch.library``
custom ops (with fake kernels, so torch.compile and torch.export see them) and the public
functions that pick the op or the pure-torch reference (:mod:`.reference`).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ...errors import InvalidTensorError
from .. import switch
from .._jit import LAUNCHES
from . import reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_SEQ = 128
WINDOWS_PER_PROGRAM = 4

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


# --- launchers ----------------------------------------------------------------------------------
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


def launch_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Triton window attention: (windows, S, C) q/k/v (any strides, unit channel stride) ->
    contiguous (windows, S, C), the layout the output projection reads."""
    n, s, d = _check_qkv(q, k, v, num_heads, 3)
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if n == 0:
        return o
    grid = (triton.cdiv(n, WINDOWS_PER_PROGRAM), num_heads)
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    LAUNCHES["window_attention"] += 1
    window_attn_kernel[grid](
        q, k, v, o, n, s, d, math.log2(math.e) / math.sqrt(d),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), o.stride(0), o.stride(1),
        S_PAD=_pow2(s), BLOCK_D=_pow2(d), WG=WINDOWS_PER_PROGRAM, DOT_PREC=prec)
    return o


def launch_window_attention_cls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Triton attention of the CLS query only: q (windows, C), k/v (windows, S, C) -> (windows, C)."""
    n, s, d = _check_qkv(q, k, v, num_heads, 2)
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if n == 0:
        return o
    grid = (triton.cdiv(n, WINDOWS_PER_PROGRAM), num_heads)
    LAUNCHES["window_attention_cls"] += 1
    window_attn_cls_kernel[grid](
        q, k, v, o, n, s, d, math.log2(math.e) / math.sqrt(d),
        q.stride(0), k.stride(0), k.stride(1), v.stride(0), v.stride(1), o.stride(0),
        S_PAD=_pow2(s, 1), BLOCK_D=_pow2(d, 1), WG=WINDOWS_PER_PROGRAM)
    return o


def launch_window_partition_norm(tokens: torch.Tensor, w_cls: torch.Tensor, pos: torch.Tensor,
                                 ln_weight: torch.Tensor, hp: int, wp: int, ws: int,
                                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
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
    partition_norm_kernel[(n * seq,)](
        tokens, w_cls.contiguous(), pos.contiguous(), ln_weight.contiguous(), x, h,
        c, wp, wp // ws, (hp // ws) * (wp // ws), eps, tokens.stride(0), tokens.stride(1), tokens.stride(2),
        WS=ws, SEQ=seq, BLOCK_C=_pow2(c, 1))
    return x, h


# --- custom ops and the public functions ------------------------------------------------------------
@torch.library.custom_op("sapiens2_edge::window_attention", mutates_args=())
def window_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    impl = launch_window_attention if switch.use_triton(q.device.type) else reference.window_attention
    return impl(q, k, v, num_heads)


@window_attention_op.register_fake
def _(q, k, v, num_heads):
    return q.new_empty(q.shape)


@torch.library.custom_op("sapiens2_edge::window_attention_cls", mutates_args=())
def window_attention_cls_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    impl = launch_window_attention_cls if switch.use_triton(q.device.type) else reference.window_attention_cls
    return impl(q, k, v, num_heads).contiguous()


@window_attention_cls_op.register_fake
def _(q, k, v, num_heads):
    return q.new_empty(q.shape)


@torch.library.custom_op("sapiens2_edge::window_partition_norm", mutates_args=())
def window_partition_norm_op(tokens: torch.Tensor, w_cls: torch.Tensor, pos: torch.Tensor, ln_weight: torch.Tensor,
                             hp: int, wp: int, ws: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    triton_path = switch.use_triton(tokens.device.type)
    impl = launch_window_partition_norm if triton_path else reference.window_partition_norm
    return impl(tokens, w_cls, pos, ln_weight, hp, wp, ws, eps)


@window_partition_norm_op.register_fake
def _(tokens, w_cls, pos, ln_weight, hp, wp, ws, eps):
    shape = (tokens.shape[0] * (hp // ws) * (wp // ws), ws * ws + 1, tokens.shape[-1])
    return tokens.new_empty(shape), tokens.new_empty(shape)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(windows, S, C) q/k/v -> (windows, S, C): the custom op where kernels are on, else the reference."""
    if switch.enabled(q):
        return window_attention_op(q, k, v, num_heads)
    return reference.window_attention(q, k, v, num_heads)


def window_attention_cls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """CLS query only: q (windows, C), k/v (windows, S, C) -> (windows, C)."""
    if switch.enabled(q):
        return window_attention_cls_op(q, k, v, num_heads)
    return reference.window_attention_cls(q, k, v, num_heads)


def window_partition_norm(tokens: torch.Tensor, w_cls: torch.Tensor, pos: torch.Tensor, ln_weight: torch.Tensor,
                          hp: int, wp: int, ws: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenizer input (windows, 1+ws*ws, C) gathered from (B, hp*wp, C) patches, and its RMSNorm."""
    if switch.enabled(tokens):
        return window_partition_norm_op(tokens, w_cls, pos, ln_weight, hp, wp, ws, eps)
    return reference.window_partition_norm(tokens, w_cls, pos, ln_weight, hp, wp, ws, eps)
