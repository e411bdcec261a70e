"""A weight-only quantized linear's decomposition as the float linear litert_torch converts, named by
the storage LiteRT gives it after conversion.

The converter folds any weight quantization in the torch graph back into float constants (its
PT2E static mode) or keeps the float weight and quantizes it at run time (without it), so an int8
weight cannot pass through it. The layer goes through as a float linear holding our exact
dequantized weight ``int8 * scale``; its class name marks it in the converted graph's op names,
and ai-edge-quantizer then stores it as int8 per output channel (min-max symmetric, which on a
weight that is exactly ``q * s`` with ``max |q| = 127`` per row gives back our ``q`` and ``s``,
checked bit for bit by the exporter) or as fp16.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..quantization.decomposed import DecomposedLinear


class _Linear(nn.Module):
    def __init__(self, d: DecomposedLinear):
        super().__init__()
        self.register_buffer("weight", d.dequantized_weight().float().clone())
        self.bias = None if d.bias is None else nn.Parameter(d.bias.float().clone(), False)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class LiteRTInt8Linear(_Linear):
    """Stored as int8 per output channel after conversion."""


class LiteRTFp16Linear(_Linear):
    """Stored as fp16 after conversion."""


#: the regex (over ai-edge-quantizer's op scopes: the op's output tensor names, its own first) that
#: picks each kind's fully-connected ops
SCOPES = {"int8": r"^[^;]*\.LiteRTInt8Linear_", "fp16": r"^[^;]*\.LiteRTFp16Linear_"}


def litert_linear(d: DecomposedLinear) -> nn.Module:
    return (LiteRTInt8Linear if d.weight_dtype == "int8" else LiteRTFp16Linear)(d)


__all__ = ["LiteRTInt8Linear", "LiteRTFp16Linear", "SCOPES", "litert_linear"]
