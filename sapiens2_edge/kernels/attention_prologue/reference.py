"""Pure-torch reference of the attention prologue: exactly the reference ``Attention`` steps
(view + transpose, QK-RMSNorm, ``apply_rope`` with its bf16 rounding, repeat of kv heads)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...models.backbone import apply_rope


def attention_prologue(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor | None,
                       k_weight: torch.Tensor | None, sin: torch.Tensor | None, cos: torch.Tensor | None,
                       num_heads: int, num_kv_heads: int, eps: float, round_bf16: bool,
                       expand_kv: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, t, c = q.shape
    d = c // num_heads
    q = q.view(b, t, num_heads, d).transpose(1, 2)
    k = k.view(b, t, num_kv_heads, d).transpose(1, 2)
    v = v.view(b, t, num_kv_heads, d).transpose(1, 2)
    if q_weight is not None:
        q, k = F.rms_norm(q, (d,), q_weight, eps), F.rms_norm(k, (d,), k_weight, eps)
    if sin is not None:
        q, k = apply_rope(q, sin, cos, round_bf16), apply_rope(k, sin, cos, round_bf16)
    if expand_kv and num_heads > num_kv_heads:
        g = num_heads // num_kv_heads
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    return q.contiguous(), k.contiguous(), v.contiguous()
