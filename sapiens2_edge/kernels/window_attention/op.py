"""``torch.library`` custom ops of the tokenizer kernels (with fake kernels, so torch.compile and
torch.export see them) and the public functions that pick the op or the reference."""

from __future__ import annotations

import torch

from .. import dispatch
from . import launcher, reference


def _impl(device: torch.device):
    return launcher if dispatch.use_triton(device.type) else reference


@torch.library.custom_op("sapiens2_edge::window_attention", mutates_args=())
def window_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    return _impl(q.device).window_attention(q, k, v, num_heads)


@window_attention_op.register_fake
def _(q, k, v, num_heads):
    return q.new_empty(q.shape)


@torch.library.custom_op("sapiens2_edge::window_attention_cls", mutates_args=())
def window_attention_cls_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    return _impl(q.device).window_attention_cls(q, k, v, num_heads).contiguous()


@window_attention_cls_op.register_fake
def _(q, k, v, num_heads):
    return q.new_empty(q.shape)


@torch.library.custom_op("sapiens2_edge::window_partition_norm", mutates_args=())
def window_partition_norm_op(tokens: torch.Tensor, w_cls: torch.Tensor, pos: torch.Tensor, ln_weight: torch.Tensor,
                             hp: int, wp: int, ws: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _impl(tokens.device).window_partition_norm(tokens, w_cls, pos, ln_weight, hp, wp, ws, eps)


@window_partition_norm_op.register_fake
def _(tokens, w_cls, pos, ln_weight, hp, wp, ws, eps):
    shape = (tokens.shape[0] * (hp // ws) * (wp // ws), ws * ws + 1, tokens.shape[-1])
    return tokens.new_empty(shape), tokens.new_empty(shape)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(windows, S, C) q/k/v -> (windows, S, C): the custom op where kernels are on, else the reference."""
    if dispatch.enabled(q):
        return window_attention_op(q, k, v, num_heads)
    return reference.window_attention(q, k, v, num_heads)


def window_attention_cls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """CLS query only: q (windows, C), k/v (windows, S, C) -> (windows, C)."""
    if dispatch.enabled(q):
        return window_attention_cls_op(q, k, v, num_heads)
    return reference.window_attention_cls(q, k, v, num_heads)


def window_partition_norm(tokens: torch.Tensor, w_cls: torch.Tensor, pos: torch.Tensor, ln_weight: torch.Tensor,
                          hp: int, wp: int, ws: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenizer input (windows, 1+ws*ws, C) gathered from (B, hp*wp, C) patches, and its RMSNorm."""
    if dispatch.enabled(tokens):
        return window_partition_norm_op(tokens, w_cls, pos, ln_weight, hp, wp, ws, eps)
    return reference.window_partition_norm(tokens, w_cls, pos, ln_weight, hp, wp, ws, eps)
