"""FP8 E4M3 rowwise GEMM (per-token x per-channel scales, fp32 accumulation, fused epilogue) for
GPUs of compute capability >= 8.9. The Triton kernel is the scaled GEMM of :mod:`..int8_gemm`
instantiated for E4M3; ``reference.py`` pure torch; ``op.py`` the custom op and the gate."""

from .op import MIN_CAPABILITY, fp8_gemm, fp8_gemm_op, fp8_supported, fp8_unsupported_reason
from .reference import fp8_gemm_reference

__all__ = ["fp8_gemm", "fp8_gemm_op", "fp8_gemm_reference", "fp8_supported", "fp8_unsupported_reason",
           "MIN_CAPABILITY"]
