"""RMSNorm fused with per-token int8 / E4M3 quantization (and the same quantization alone).

``kernel.py`` Triton kernel + launcher, ``reference.py`` pure torch, ``op.py`` the custom op and
the public functions.
"""

from .op import QDTYPES, per_token_quant, quant_rows, rmsnorm_quant
from .reference import quant_rows_reference

__all__ = ["rmsnorm_quant", "per_token_quant", "quant_rows", "quant_rows_reference", "QDTYPES"]
