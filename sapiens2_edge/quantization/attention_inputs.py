"""int8 attention inputs: q, k and v of each selected attention rounded to symmetric int8, one
calibrated scale per tensor (``recipe.attention="int8"``).

Where: right after the QK-norm and RoPE, i.e. exactly what the attention product reads, for all
tokens (prefix tokens included: the calibrated range is the largest |x| over the calibration set, so
nothing is clipped on the data it was read from). In torch the module computes
``clamp(round(x / s), -127, 127) * s`` (the package's int8 convention, :mod:`~..kernels.numerics`);
an ONNX export writes it as Clip -> QuantizeLinear -> DequantizeLinear, which OpenVINO reads as
FakeQuantize on its fused attention's inputs and then runs that attention with int8 products
(benchmarks/results/cpu_peers.md, AVX-512 VNNI EPYC: 0.335 -> 0.276 s at 0.1b 512x384, attention
kernels 1709 -> 1435 ms at 0.4b 1024x768). The native engine runs q k^T as an int8 GEMM.

Why per tensor and max-calibrated: a softmax input error grows with |q||k|, and q/k are RMS-normed
per head, so their ranges are narrow and alike across tokens; clipping q or k (a percentile) changes
the attention pattern of exactly the tokens that stand out. Measured on the trained fixtures
(benchmarks/attention_int8_gates.py): both gates hold (numbers in benchmarks/results/cpu_peers.md).
"""

from __future__ import annotations

import fnmatch
from typing import Iterable, Mapping

import torch
from torch import nn

from ..kernels import numerics as nx
from .observers import finite_absmax

SLOT = "input_quant"  # the Attention attribute that holds the module below


def fake_quant_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``clamp(round(x / s), -127, 127) * s`` in x's dtype (the quantization itself in float32; the
    integers stay float, so every exporter traces plain float ops)."""
    return (torch.clamp(torch.round(x.float() / scale), -nx.INT8_MAX, nx.INT8_MAX) * scale).to(x.dtype)


class AttentionInputQuant(nn.Module):
    """q, k, v -> their int8 values (dequantized), with the scales stored as ``q_scale``,
    ``k_scale``, ``v_scale`` (float32, shape (1,))."""

    def __init__(self, scales: Iterable[float] = (1.0, 1.0, 1.0)):
        super().__init__()
        for name, s in zip(("q_scale", "k_scale", "v_scale"), tuple(scales), strict=True):
            self.register_buffer(name, torch.tensor([float(s)], dtype=torch.float32))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        return (fake_quant_int8(q, self.q_scale), fake_quant_int8(k, self.k_scale), fake_quant_int8(v, self.v_scale))


class AttentionInputObserver(nn.Module):
    """Calibration: passes q, k, v through and keeps the largest |x| of each."""

    def __init__(self):
        super().__init__()
        self.amax = [0.0, 0.0, 0.0]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        for i, x in enumerate((q, k, v)):
            self.amax[i] = max(self.amax[i], finite_absmax(x))
        return q, k, v

    def scales(self) -> tuple[float, float, float]:
        return tuple(max(m / nx.INT8_MAX, nx.EPS_SCALE) for m in self.amax)


def attention_names(model: nn.Module, exclude: Iterable[str] = (), quantize_tokenizer: bool = True) -> list[str]:
    """Module names of the backbone attentions whose inputs a recipe with ``attention="int8"``
    quantizes: every one except those an ``exclude`` pattern matches (and the 4K tokenizer's
    without ``quantize_tokenizer``)."""
    from ..models.backbone import Attention

    names = [n for n, m in model.named_modules() if isinstance(m, Attention) and n.startswith("backbone.")]
    return [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in exclude)
            and (quantize_tokenizer or not n.startswith("backbone.tokenizer."))]


def selected(model: nn.Module, recipe) -> list[str]:
    """The attentions ``recipe`` quantizes the inputs of (none unless ``recipe.attention == "int8"``)."""
    if getattr(recipe, "attention", "float") != "int8":
        return []
    return attention_names(model, recipe.exclude, recipe.quantize_tokenizer)


def attach_observers(model: nn.Module, names: Iterable[str]) -> dict[str, AttentionInputObserver]:
    observers = {n: AttentionInputObserver() for n in names}
    for n, obs in observers.items():
        setattr(model.get_submodule(n), SLOT, obs)
    return observers


def install(model: nn.Module, scales: Mapping[str, Iterable[float]]) -> None:
    """Give each named attention its :class:`AttentionInputQuant` with the given (q, k, v) scales."""
    for n, s in scales.items():
        setattr(model.get_submodule(n), SLOT, AttentionInputQuant(s))


def remove(model: nn.Module, names: Iterable[str]) -> None:
    for n in names:
        setattr(model.get_submodule(n), SLOT, None)


def quantized_attentions(model: nn.Module) -> dict[str, AttentionInputQuant]:
    """Attention module name -> its input quantization, for every attention that has one."""
    return {n.rpartition(".")[0]: m for n, m in model.named_modules() if isinstance(m, AttentionInputQuant)}


__all__ = ["AttentionInputQuant", "AttentionInputObserver", "attention_names", "selected",
           "attach_observers", "install", "remove", "quantized_attentions", "fake_quant_int8"]
