"""Main-encoder attention prologue: QK-RMSNorm + 2-D RoPE (skipping the prefix tokens, with the
reference's bf16 rounding) + GQA head mapping in one pass, emitting SDPA-ready q/k/v (Triton
kernel + launcher, pure-torch reference, ``torch.library`` custom op)."""

from .launcher import LAUNCHES
from .module import attention_forward
from .op import attention_prologue

__all__ = ["LAUNCHES", "attention_forward", "attention_prologue"]
