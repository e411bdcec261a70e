"""The 4K tokenizer's forward on the fused kernels (what ``WindowTokenizer`` runs when
``dispatch.enabled``): one gather + RMSNorm pass builds every window at once (no permute
copies, no chunk loop), each block's attention reads q/k/v straight from the projections, and
the last block computes only what its CLS output needs (q, attention, proj and FFN of token 0)."""

from __future__ import annotations

import torch
from torch import nn

from . import op


def _attn_out(attn: nn.Module, o: torch.Tensor) -> torch.Tensor:
    o = attn.proj(o)
    return attn.gamma(o) if attn.gamma is not None else o


def tokenizer_forward(tok: nn.Module, tokens: torch.Tensor, hp: int, wp: int, ws: int) -> torch.Tensor:
    """``WindowTokenizer.forward`` on the kernels: (B, hp*wp, C) -> (B, (hp/ws)*(wp/ws), C)."""
    b, _, c = tokens.shape
    blocks = tok.blocks
    first = blocks[0]
    x, h = op.window_partition_norm(tokens, tok.w_cls, tok.local_pos_embed, first.ln1.weight, hp, wp, ws,
                                    first.ln1.eps)
    for i, blk in enumerate(blocks):
        attn = blk.attn
        if i:
            h = blk.ln1(x)
        if i < len(blocks) - 1:
            x = x + _attn_out(attn, op.window_attention(attn.wq(h), attn.wk(h), attn.wv(h), attn.heads))
        else:  # only token 0 survives the tokenizer
            o = op.window_attention_cls(attn.wq(h[:, 0]), attn.wk(h), attn.wv(h), attn.heads)
            x = x[:, 0] + _attn_out(attn, o)
        x = x + blk.ffn(blk.ln2(x))
    return x.reshape(b, -1, c)
