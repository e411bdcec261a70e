"""``torch.library`` custom op of the attention prologue (with a fake kernel for torch.compile /
torch.export) and the public function that picks the op or the reference."""

from __future__ import annotations

from typing import Optional

import torch

from .. import dispatch
from . import launcher, reference


@torch.library.custom_op("sapiens2_edge::attention_prologue", mutates_args=())
def attention_prologue_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: Optional[torch.Tensor],
                          k_weight: Optional[torch.Tensor], sin: Optional[torch.Tensor], cos: Optional[torch.Tensor],
                          num_heads: int, num_kv_heads: int, eps: float, round_bf16: bool,
                          expand_kv: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    impl = launcher if dispatch.use_triton(q.device.type) else reference
    return impl.attention_prologue(q, k, v, q_weight, k_weight, sin, cos, num_heads, num_kv_heads, eps, round_bf16,
                                   expand_kv)


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
    if dispatch.enabled(q):
        return attention_prologue_op(*args)
    return reference.attention_prologue(*args)
