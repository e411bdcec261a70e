"""The prefix tokens' rows as a GEMM of their own in the FFNs of graphs made for OpenVINO.

A static int8 linear quantizes the patch tokens with the calibrated scale and the first ``prefix``
tokens (CLS + storage: outliers) with their own per-token scale. The one-GEMM form of
:mod:`.onnx_quant` rescales those rows onto the static grid and multiplies the output by a per-row
factor after the GEMM. OpenVINO fuses a FullyConnected's bias and the element-wise ops after it
(SiLU, the SwiGLU product, the next input's quantization) only when they are per channel: the
per-row factor stops that, and each output makes an extra round trip through memory.

Here each FFN linear (the SwiGLU's gate, up and w3) runs as two GEMMs over the same int8 weight
(one initializer; OpenVINO packs it once): the prefix rows with their per-token scales (a GEMM of
``prefix`` rows), the patch rows with the static scale alone, whose post-ops then fuse; the outputs
are concatenated on the token axis (in place in OpenVINO). The arithmetic is the recipe's, row by
row. Measured on an AMD EPYC (benchmarks/results/cpu_peers.md): 0.1b 418 -> 397 ms (2.4-5 % by
run), 0.4b 0.4-1.7 %. The attention's q/k/v and output projections stay one GEMM: splitting them
too gained nothing more (397.5 ms) and each extra FullyConnected holds ~0.4 MB of OpenVINO's
per-layer state (+13 MB at 0.1b). Only where OpenVINO builds int8 FullyConnected layers (signed int8 weights, i.e.
CPUs with VNNI or AMX); not the 4K tokenizer's windows (one prefix token of 17), and not ONNX
Runtime, whose int8 GEMM with the one-GEMM form is faster (all linears split: 2.00 s against 1.43 s
at 0.1b on the same EPYC).

An FFN whose three linears all qualify runs whole on each group of rows (:class:`FFNRowsApart`):
gate, up, SiLU, product and w3 on the prefix rows, then on the patch rows, one concatenation after w3.
Split per linear, the gate's and up's outputs were concatenated (T, H) tensors, so the SiLU, the
product and w3's input quantization ran as a separate pass over them instead of fusing into the
patch rows' GEMMs.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .gate_split import SplitSwiGLU
from .onnx_quant import ExportQLinear, qlinear, swapped_modules


def rows_apart(name: str, wdtype: str, amode: str, prefix: int, signed: bool) -> bool:
    """Whether layer ``name`` (weights ``wdtype``, activations ``amode``) runs its prefix rows apart."""
    where = f".{name}."
    return (wdtype == "int8" and amode == "static" and prefix > 0 and signed and ".ffn." in where
            and ".tokenizer." not in where)


class PrefixRowsApart(nn.Module):
    """``m`` as two GEMMs: the first ``m.prefix`` rows of each sequence, then the rest."""

    def __init__(self, m: ExportQLinear):
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, p = self.m, self.m.prefix
        if x.ndim != 3:
            return m(x)
        return torch.cat([rows_linear(m, x[:, :p], "rows"), rows_linear(m, x[:, p:], "static")], dim=1)


class FFNRowsApart(nn.Module):
    """A :class:`~.gate_split.SplitSwiGLU` whose gate, up and w3 run their prefix rows apart, run whole
    on the first ``prefix`` rows of each sequence, then on the rest."""

    def __init__(self, ffn: SplitSwiGLU):
        super().__init__()
        self.ffn = ffn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.ffn.w3.prefix
        if x.ndim != 3:
            return self.ffn(x)
        return torch.cat([self._rows(x[:, :p], "rows"), self._rows(x[:, p:], "static")], dim=1)

    def _rows(self, x: torch.Tensor, amode: str) -> torch.Tensor:
        f = self.ffn
        return rows_linear(f.w3, F.silu(rows_linear(f.gate, x, amode)) * rows_linear(f.up, x, amode), amode)


def rows_linear(m: ExportQLinear, x: torch.Tensor, amode: str) -> torch.Tensor:
    """``m`` on rows that are all prefix rows (``amode`` "rows": a per-token scale each) or all patch rows
    ("static": the calibrated scale)."""
    return qlinear(x, m.w_t, m.w_scale, m.w_zero, m.bias, m.in_scale, 0, m.wdtype, amode)


def _apart(name: str, m: nn.Module) -> bool:
    return type(m) is ExportQLinear and rows_apart(name, m.wdtype, m.amode, m.prefix, m.w_t.dtype == torch.int8)


@contextlib.contextmanager
def split_prefix_rows(model: nn.Module) -> Iterator[int]:
    """For the duration, every FFN whose three linears :func:`rows_apart` selects runs as
    :class:`FFNRowsApart`, and every other selected export form as :class:`PrefixRowsApart`; yields how
    many linears run their prefix rows apart. Call it inside ``export_modules`` and ``split_gate_projections``."""
    ffns = {name: m for name, m in model.named_modules() if type(m) is SplitSwiGLU
            and all(_apart(f"{name}.{part}", getattr(m, part)) for part in ("gate", "up", "w3"))
            and m.gate.prefix == m.up.prefix == m.w3.prefix}
    inside = tuple(f"{name}." for name in ffns)
    found = {name: m for name, m in model.named_modules() if _apart(name, m) and not name.startswith(inside)}
    with swapped_modules(model, ffns, FFNRowsApart) as whole, swapped_modules(model, found, PrefixRowsApart) as alone:
        yield 3 * whole + alone


__all__ = ["FFNRowsApart", "PrefixRowsApart", "rows_apart", "rows_linear", "split_prefix_rows"]
