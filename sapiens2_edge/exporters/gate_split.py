"""The SwiGLU's fused gate/up projection as two GEMMs in the graphs made for OpenVINO and ONNX Runtime.

``SwiGLU`` computes ``w12(x)`` (2H wide) and splits it into gate and up halves. In torch the split is
a view; OpenVINO's CPU plugin runs it as a ``Split`` on its reference (slow, generic) kernel: 3-4 %
of the int8 artifact's time at 0.1b and 0.4b on an AMX Xeon (benchmarks/results/cpu_peers.md). ONNX
Runtime copies both halves out of the (T, 2H) product, which with the int8 linears' rescale and bias
is three (T, 2H) float tensors in turn (100 MB each at 0.4b 1024x768). Two GEMMs over the two halves
of the weight compute the same dot products (an output column's sum is over the same K inputs in
either form) and leave nothing to split.

Each half is built from the module the export put in ``w12``: a float ``nn.Linear`` (halves are
views of its rows: no copy), or the quantized export forms of :mod:`.onnx_quant`, whose per-output
tensors (weights' columns, scales, zero points, bias) are sliced and whose input quantization
(static scale, prefix tokens, dynamic per-token) is shared as it was.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbone import SwiGLU
from .onnx_quant import ExportQLinear, ExportQLinear4


class SplitSwiGLU(nn.Module):
    """``w3(silu(gate(x)) * up(x))``: SwiGLU with the gate and up projections as separate layers."""

    def __init__(self, gate: nn.Module, up: nn.Module, w3: nn.Module):
        super().__init__()
        self.gate, self.up, self.w3 = gate, up, w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.gate(x)) * self.up(x))


def _linear_halves(m: nn.Linear) -> tuple[nn.Linear, nn.Linear]:
    h = m.out_features // 2
    out = []
    for rows in (slice(0, h), slice(h, 2 * h)):
        half = nn.Linear(m.in_features, h, bias=m.bias is not None, device="meta")
        half.weight = nn.Parameter(m.weight.detach()[rows], requires_grad=False)  # rows: a contiguous view
        if m.bias is not None:
            half.bias = nn.Parameter(m.bias.detach()[rows], requires_grad=False)
        out.append(half)
    return out[0], out[1]


def _sliced(m: nn.Module, names: dict[str, int], rows: slice) -> nn.Module:
    """A shallow copy of ``m`` whose buffers in ``names`` are sliced along the given dimension."""
    half = copy.copy(m)
    half._buffers = dict(m._buffers)
    for name, dim in names.items():
        t = m._buffers.get(name)
        if t is not None:
            half._buffers[name] = t.narrow(dim, rows.start, rows.stop - rows.start).contiguous()
    return half


def _halves(m: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The gate and up halves of ``w12``'s export form, or None for a form this does not know."""
    if type(m) is nn.Linear:
        return _linear_halves(m)
    if type(m) is ExportQLinear:
        n = m.w_t.shape[1]
        per_output = {"w_t": 1, "w_scale": 0, "w_zero": 0, "bias": 0}
        return tuple(_sliced(m, per_output, r) for r in (slice(0, n // 2), slice(n // 2, n)))  # type: ignore[return-value]
    if type(m) is ExportQLinear4:
        n = m.blocks.shape[0]
        groups = m.scales.numel() // n
        out = []
        for r in (slice(0, n // 2), slice(n // 2, n)):
            half = _sliced(m, {"blocks": 0, "bias": 0}, r)
            half._buffers["scales"] = m.scales.reshape(n, groups)[r].reshape(-1).contiguous()
            out.append(half)
        return out[0], out[1]
    return None


@contextlib.contextmanager
def split_gate_projections(model: nn.Module) -> Iterator[int]:
    """For the duration, every SwiGLU whose ``w12`` has a known export form runs as :class:`SplitSwiGLU`;
    yields how many were split. Call it inside ``export_modules`` (it splits the export forms)."""
    from ..quantization.model import set_module

    swapped = {}
    try:
        for name, m in list(model.named_modules()):
            halves = _halves(m.w12) if isinstance(m, SwiGLU) else None
            if halves is not None:
                swapped[name] = m
                set_module(model, name, SplitSwiGLU(*halves, m.w3))
        yield len(swapped)
    finally:
        for name, m in swapped.items():
            set_module(model, name, m)
