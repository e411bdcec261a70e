"""Pure-torch reference of the attention prologue, self-contained: per head, RMSNorm over the
head width, then RoPE on the body tokens written as the rotation of the pairs (j, j + d/2) with
every product and sum rounded to bf16 when ``round_bf16`` (what the reference model does by
computing in bf16). The tests check it against the backbone's own ``Attention`` steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(torch.float32)


def rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, round_bf16: bool) -> torch.Tensor:
    """RoPE of (B, heads, T, d) on its last ``len(sin)`` tokens; the leading prefix tokens stay."""
    dtype = x.dtype
    x = x.float()
    r = _bf16 if round_bf16 else (lambda t: t)
    x = r(x)
    prefix = x.shape[-2] - sin.shape[-2]
    half = x.shape[-1] // 2
    u, w = x[..., prefix:, :half], x[..., prefix:, half:]
    cu, cw, su, sw = cos[:, :half], cos[:, half:], sin[:, :half], sin[:, half:]
    body = torch.cat([r(r(u * cu) - r(w * su)), r(r(w * cw) + r(u * sw))], dim=-1)
    return torch.cat([x[..., :prefix, :], body], dim=-2).to(dtype)


def attention_prologue(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor | None,
                       k_weight: torch.Tensor | None, sin: torch.Tensor | None, cos: torch.Tensor | None,
                       num_heads: int, num_kv_heads: int, eps: float, round_bf16: bool,
                       expand_kv: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (B, T, H*d), k/v (B, T, KV*d) -> contiguous q (B, H, T, d), k/v (B, KV or H, T, d)."""
    b, t, c = q.shape
    d = c // num_heads
    q = q.view(b, t, num_heads, d).transpose(1, 2)
    k = k.view(b, t, num_kv_heads, d).transpose(1, 2)
    v = v.view(b, t, num_kv_heads, d).transpose(1, 2)
    if q_weight is not None:
        q, k = F.rms_norm(q, (d,), q_weight, eps), F.rms_norm(k, (d,), k_weight, eps)
    if sin is not None:
        q, k = rotate(q, sin, cos, round_bf16), rotate(k, sin, cos, round_bf16)
    if expand_kv and num_heads > num_kv_heads:
        g = num_heads // num_kv_heads
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    return q.contiguous(), k.contiguous(), v.contiguous()
