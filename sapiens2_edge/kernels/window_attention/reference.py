"""Pure-torch references of the tokenizer kernels, self-contained: the computations of
``WindowTokenizer`` and its ``Attention`` (tokenizer blocks: MHA, no QK-norm, no RoPE) in the
kernels' tensor layouts. The tests check them against the model's tokenizer."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(windows, S, C) q/k/v -> (windows, S, C) attention output, channel = head * d + j."""
    n, s, c = q.shape
    split = lambda t: t.reshape(n, -1, num_heads, c // num_heads).transpose(1, 2)  # noqa: E731
    o = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return o.transpose(1, 2).reshape(n, -1, c)


def window_attention_cls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The CLS query's row only: q (windows, C), k/v (windows, S, C) -> (windows, C)."""
    return window_attention(q[:, None], k, v, num_heads)[:, 0]


def window_partition(tokens: torch.Tensor, w_cls: torch.Tensor, pos: torch.Tensor, hp: int, wp: int,
                     ws: int) -> torch.Tensor:
    """(B, hp*wp, C) row-major patches -> (B*windows, 1+ws*ws, C): [w_cls, patches] + pos."""
    b, _, c = tokens.shape
    x = tokens.reshape(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
    return torch.cat([w_cls.reshape(1, 1, c).expand(x.shape[0], -1, -1), x], dim=1) + pos.reshape(1, -1, c)


def window_partition_norm(tokens: torch.Tensor, w_cls: torch.Tensor, pos: torch.Tensor, ln_weight: torch.Tensor,
                          hp: int, wp: int, ws: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The partitioned sequences and their RMSNorm (the first block's ``ln1``)."""
    x = window_partition(tokens, w_cls, pos, hp, wp, ws)
    return x, F.rms_norm(x, (x.shape[-1],), ln_weight, eps)
