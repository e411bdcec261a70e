"""``sapiens2_edge::int8_gemm``: the custom op, its fake kernel and the checked public function."""

from __future__ import annotations

import torch

from ...errors import ConfigError, InvalidTensorError
from ..dispatch import use_triton
from .reference import int8_gemm_reference

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@torch.library.custom_op("sapiens2_edge::int8_gemm", mutates_args=())
def int8_gemm_op(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
                 bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    if use_triton(a.device.type):
        from .kernel import launch_scaled_gemm

        return launch_scaled_gemm(a, w, a_scale, w_scale, bias, out_dtype)
    return int8_gemm_reference(a, w, a_scale, w_scale, bias, out_dtype)


@int8_gemm_op.register_fake
def _(a, w, a_scale, w_scale, bias, out_dtype):
    return a.new_empty(a.shape[0], w.shape[0], dtype=out_dtype)


def check_gemm_inputs(a, w, a_scale, w_scale, bias, out_dtype, qdtype: torch.dtype, what: str) -> None:
    """Typed errors for everything the kernels assume (shared by the INT8 and FP8 GEMMs)."""
    for name, t in (("activations", a), ("weight", w)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.dtype != qdtype:
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise InvalidTensorError(f"{what}: {name} must be a 2-D {qdtype} tensor, got {got}")
    m, k = a.shape
    n = w.shape[0]
    if w.shape[1] != k or k == 0:
        raise InvalidTensorError(f"{what}: activations (M, K)={tuple(a.shape)} and weight (N, K)={tuple(w.shape)} "
                                 "must share a non-zero K")
    if a_scale.dtype != torch.float32 or a_scale.numel() != m:
        raise InvalidTensorError(f"{what}: activation scales must be float32 with one value per row (M={m}), "
                                 f"got {tuple(a_scale.shape)} {a_scale.dtype}")
    if w_scale.dtype != torch.float32 or w_scale.numel() not in (1, n):
        raise InvalidTensorError(f"{what}: weight scales must be float32 of shape ({n},) or (1,), got "
                                 f"{tuple(w_scale.shape)} {w_scale.dtype}")
    if bias is not None and (bias.dtype != torch.float32 or bias.shape != (n,)):
        raise InvalidTensorError(f"{what}: bias must be float32 of shape ({n},), got {tuple(bias.shape)} {bias.dtype}")
    if out_dtype not in OUT_DTYPES:
        raise ConfigError(f"{what}: out_dtype {out_dtype} is not supported; expected float32, float16 or bfloat16")
    devices = {t.device for t in (a, w, a_scale, w_scale, bias) if t is not None}
    if len(devices) > 1:
        raise InvalidTensorError(f"{what}: all tensors must be on one device, got {sorted(map(str, devices))}")


def int8_gemm(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
              bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(a @ w.T) * (a_scale * w_scale) + bias`` for int8 a (M, K), w (N, K): int32 accumulation,
    dequantization and bias fused in the Triton kernel's epilogue; output (M, N) in ``out_dtype``."""
    check_gemm_inputs(a, w, a_scale, w_scale, bias, out_dtype, torch.int8, "int8_gemm")
    return int8_gemm_op(a, w, a_scale.reshape(-1, 1), w_scale.reshape(-1), bias, out_dtype)


__all__ = ["int8_gemm", "int8_gemm_op", "check_gemm_inputs", "OUT_DTYPES"]
