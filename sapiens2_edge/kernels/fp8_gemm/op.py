"""``sapiens2_edge::fp8_gemm``: the custom op, the compute-capability gate and the public function.

FP8 tensor cores exist from compute capability 8.9 (Ada, Hopper). Below that the op declines to
the reference in ``auto`` mode and raises :class:`~sapiens2_edge.errors.ConfigError` when
``SAPIENS2_EDGE_KERNELS=triton`` forces the kernel.
"""

from __future__ import annotations

import torch

from ...errors import ConfigError
from ..dispatch import ENV, interpreting, mode, use_triton
from ..int8_gemm.op import check_gemm_inputs
from .reference import fp8_gemm_reference

MIN_CAPABILITY = (8, 9)


def fp8_unsupported_reason(device: torch.device | str) -> str | None:
    """Why the FP8 Triton kernel cannot run on ``device``, or None when it can."""
    device = torch.device(device)
    if device.type == "cuda":
        cap = tuple(torch.cuda.get_device_capability(device))
        if cap < MIN_CAPABILITY:
            name = torch.cuda.get_device_name(device)
            return (f"the FP8 GEMM needs a GPU of compute capability >= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} "
                    f"(Ada, Hopper or newer); {name} is sm_{cap[0]}{cap[1]}. Use the int8 scheme on this GPU")
        return None
    if interpreting():
        return None
    return f"the FP8 Triton GEMM runs on CUDA GPUs (or under TRITON_INTERPRET=1), not on {device.type}"


def fp8_supported(device: torch.device | str) -> bool:
    return fp8_unsupported_reason(device) is None


@torch.library.custom_op("sapiens2_edge::fp8_gemm", mutates_args=())
def fp8_gemm_op(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    if use_triton(a.device.type):
        reason = fp8_unsupported_reason(a.device)
        if reason is None:
            from ..int8_gemm.kernel import launch_scaled_gemm

            return launch_scaled_gemm(a, w, a_scale, w_scale, bias, out_dtype)
        if mode() == "triton":
            raise ConfigError(f"{ENV}=triton: {reason}")
    return fp8_gemm_reference(a, w, a_scale, w_scale, bias, out_dtype)


@fp8_gemm_op.register_fake
def _(a, w, a_scale, w_scale, bias, out_dtype):
    return a.new_empty(a.shape[0], w.shape[0], dtype=out_dtype)


def fp8_gemm(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
             bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(a @ w.T) * (a_scale * w_scale) + bias`` for float8_e4m3fn a (M, K), w (N, K) with
    per-token and per-channel (or per-tensor) float32 scales; fp32 accumulation, fused epilogue."""
    check_gemm_inputs(a, w, a_scale, w_scale, bias, out_dtype, torch.float8_e4m3fn, "fp8_gemm")
    return fp8_gemm_op(a, w, a_scale.reshape(-1, 1), w_scale.reshape(-1), bias, out_dtype)


__all__ = ["fp8_gemm", "fp8_gemm_op", "fp8_supported", "fp8_unsupported_reason", "MIN_CAPABILITY"]
