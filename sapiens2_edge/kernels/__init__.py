"""Triton kernels behind ``torch.library`` custom ops, each beside its pure-torch reference.

One folder per kernel: ``op.py`` holds the Triton kernel, its launcher, the custom op and the
public function that picks the op or the reference; ``reference.py`` the pure-torch reference
(importable without Triton; the references import nothing above this package). :mod:`.switch`
is the one place that decides where kernels run; :mod:`.numerics` holds the int8 / E4M3 rounding
rules the quantization kernels and ``QuantLinear`` share.

  attention_prologue  QK-RMSNorm + 2-D RoPE + GQA mapping of the main encoder's attention
  window_attention    the 4K tokenizer's window attention, CLS-only attention, gather + RMSNorm
  scaled_gemm         INT8 / FP8 GEMM with the dequantization and bias in its epilogue
  token_quant         per-token (or static) int8 / E4M3 quantization of activations
"""
