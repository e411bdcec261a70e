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
"""

from __future__ import annotations

import torch
from torch import nn

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
        args = (m.w_t, m.w_scale, m.w_zero, m.bias, m.in_scale)
        head = qlinear(x[:, :p], *args, 0, m.wdtype, "rows")
        rest = qlinear(x[:, p:], *args, 0, m.wdtype, "static")
        return torch.cat([head, rest], dim=1)


def split_prefix_rows(model: nn.Module):
    """For the duration, every export form that :func:`rows_apart` selects runs as
    :class:`PrefixRowsApart`; yields how many. Call it inside ``export_modules``."""
    found = {name: m for name, m in model.named_modules() if type(m) is ExportQLinear
             and rows_apart(name, m.wdtype, m.amode, m.prefix, m.w_t.dtype == torch.int8)}
    return swapped_modules(model, found, PrefixRowsApart)


__all__ = ["PrefixRowsApart", "rows_apart", "split_prefix_rows"]
