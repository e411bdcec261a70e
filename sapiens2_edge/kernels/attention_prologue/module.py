"""The main encoder's ``Attention.forward`` on the fused prologue (what it runs when
``dispatch.enabled``): projections -> one prologue pass -> SDPA (native GQA) -> proj."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .op import attention_prologue


def attention_forward(attn: nn.Module, x: torch.Tensor,
                      rope: tuple[torch.Tensor, torch.Tensor, bool] | None = None) -> torch.Tensor:
    b, t, c = x.shape
    norm = attn.q_norm is not None
    sin, cos, round_bf16 = rope if rope is not None else (None, None, False)
    q, k, v = attention_prologue(attn.wq(x), attn.wk(x), attn.wv(x), attn.q_norm.weight if norm else None,
                                 attn.k_norm.weight if norm else None, sin, cos, attn.heads, attn.kv_heads,
                                 attn.q_norm.eps if norm else 1e-6, round_bf16)
    o = F.scaled_dot_product_attention(q, k, v, enable_gqa=attn.heads != attn.kv_heads)
    o = attn.proj(o.transpose(1, 2).reshape(b, t, c))
    return attn.gamma(o) if attn.gamma is not None else o
