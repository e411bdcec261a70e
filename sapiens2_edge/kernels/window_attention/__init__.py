"""Fused window attention for the 4K tokenizer (Triton kernel + launcher, pure-torch reference,
``torch.library`` custom ops) and the tokenizer forward built on it."""

from .launcher import LAUNCHES
from .op import window_attention, window_attention_cls, window_partition_norm
from .tokenizer import tokenizer_forward

__all__ = ["LAUNCHES", "tokenizer_forward", "window_attention", "window_attention_cls", "window_partition_norm"]
