"""INT8 W8A8 GEMM: int8 activations x int8 weights, int32 accumulation, per-token activation and
per-channel weight scales with the dequantization and bias fused in the epilogue.

``kernel.py`` Triton kernel + launcher (shared with :mod:`..fp8_gemm`), ``reference.py`` pure
torch, ``op.py`` the custom op and the checked public function; ``_jit.py`` builds kernels lazily
and counts launches.
"""

from ._jit import LAUNCHES
from .op import OUT_DTYPES, int8_gemm, int8_gemm_op
from .reference import dequant_epilogue, int8_accumulate_reference, int8_gemm_reference

__all__ = ["int8_gemm", "int8_gemm_op", "int8_gemm_reference", "int8_accumulate_reference", "dequant_epilogue",
           "LAUNCHES", "OUT_DTYPES"]
