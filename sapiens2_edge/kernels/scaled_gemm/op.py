"""Scaled GEMM of the INT8 and FP8 linears: ``y = (a @ w.T) * (s_a * s_w) + bias`` with per-token
activation and per-channel (or per-tensor) weight scales, dequantization and bias fused in the
epilogue: the Triton kernel, its launcher, the ``sapiens2_edge::int8_gemm`` / ``fp8_gemm`` custom
ops, the checked public functions and the FP8 compute-capability gate.

a (M, K) and w (N, K) are int8, or float8_e4m3fn passed as uint8 views (the interpreter cannot
load fp8 with a fill value; the bytes are bitcast back to E4M3 in registers). int8 accumulates
in int32 (exact), fp8 in fp32. The epilogue does the dequantization in fp32 in the reference's
order (``acc * (s_a * s_w)``, then ``+ bias``) and stores in the output's dtype, so the only
rounding after the accumulation is the final cast. ``epilogue=False`` stores the raw int32 / fp32
accumulator (tests compare it bit for bit with the integer reference).

FP8 tensor cores exist from compute capability 8.9 (Ada, Hopper). Below that the FP8 op declines
to the reference in ``auto`` mode and raises :class:`~sapiens2_edge.errors.ConfigError` when
``SAPIENS2_EDGE_KERNELS=triton`` forces the kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...errors import ConfigError, InvalidTensorError
from .. import _jit, switch
from .._jit import LAUNCHES
from .reference import fp8_gemm_reference, int8_gemm_reference

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_CAPABILITY = (8, 9)


def _scaled_gemm(a_ptr, w_ptr, c_ptr, sa_ptr, sw_ptr, bias_ptr, M, N, K,
                 stride_am, stride_ak, stride_wn, stride_wk, stride_cm, stride_cn,
                 IS_FP8: tl.constexpr, SW_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr,
                 EPILOGUE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr):
    # grouped ordering: GROUP_M row-blocks share their column-blocks of w while they sit in L2
    pid = tl.program_id(0)
    num_m = (M + BLOCK_M - 1) // BLOCK_M
    num_n = (N + BLOCK_N - 1) // BLOCK_N
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % group) % size_m)
    pid_n = (pid % group) // size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # out-of-range rows / columns read a valid row (wrapped) and are never stored
    ram = rm % M
    rwn = rn % N
    a_ptrs = a_ptr + ram[:, None] * stride_am + rk[None, :] * stride_ak
    w_ptrs = w_ptr + rwn[None, :] * stride_wn + rk[:, None] * stride_wk

    if IS_FP8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for kb in range(0, (K + BLOCK_K - 1) // BLOCK_K):
        k_left = K - kb * BLOCK_K
        a = tl.load(a_ptrs, mask=rk[None, :] < k_left, other=0)
        w = tl.load(w_ptrs, mask=rk[:, None] < k_left, other=0)
        if IS_FP8:
            acc = tl.dot(a.to(tl.float8e4nv, bitcast=True), w.to(tl.float8e4nv, bitcast=True), acc)
        else:
            acc = tl.dot(a, w, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk

    c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
    c_mask = (rm[:, None] < M) & (rn[None, :] < N)
    if EPILOGUE:
        s_a = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)
        if SW_PER_CHANNEL:
            s_w = tl.load(sw_ptr + rn, mask=rn < N, other=0.0)
        else:
            s_w = tl.load(sw_ptr + rn * 0)
        y = acc.to(tl.float32) * (s_a[:, None] * s_w[None, :])
        if HAS_BIAS:
            y = y + tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
        tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=c_mask)
    else:
        tl.store(c_ptrs, acc, mask=c_mask)


# H100/H200 candidates (Triton matmul tutorial shapes); int8 and fp8 both take BLOCK_K=128 well
_CONFIGS = [
    dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=3),
    dict(BLOCK_M=256, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4),
]
# the interpreter: small tiles so tiny odd shapes still cover several blocks and the K tail
_INTERP = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=2)

# one kernel object per dtype so each keeps its own autotuning cache
_INT8 = _jit.autotuned(_scaled_gemm, _CONFIGS, key=["N", "K"])
_FP8 = _jit.autotuned(_scaled_gemm, _CONFIGS, key=["N", "K"])


def launch_scaled_gemm(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor | None, w_scale: torch.Tensor | None,
                       bias: torch.Tensor | None, out_dtype: torch.dtype, *, epilogue: bool = True) -> torch.Tensor:
    """Launch the kernel on validated inputs (see the ops for the checks). fp8 tensors are accepted
    as float8_e4m3fn and viewed as bytes here."""
    fp8 = a.dtype == torch.float8_e4m3fn
    m, k = a.shape
    n = w.shape[0]
    if fp8:
        a, w = a.view(torch.uint8), w.view(torch.uint8)
    acc_dtype = torch.float32 if fp8 else torch.int32
    c = torch.empty(m, n, dtype=out_dtype if epilogue else acc_dtype, device=a.device)
    if m == 0 or n == 0:
        return c
    dummy = c.new_empty(1, dtype=torch.float32)
    sa = a_scale.reshape(-1) if epilogue else dummy
    sw = w_scale.reshape(-1) if epilogue else dummy
    args = (a, w, c, sa, sw, bias if bias is not None else dummy, m, n, k,
            a.stride(0), a.stride(1), w.stride(0), w.stride(1), c.stride(0), c.stride(1))
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _jit.launch("fp8_gemm" if fp8 else "int8_gemm", _FP8 if fp8 else _INT8, grid, args, _INTERP, IS_FP8=fp8,
                SW_PER_CHANNEL=epilogue and sw.numel() > 1, HAS_BIAS=epilogue and bias is not None, EPILOGUE=epilogue)
    return c


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
    if switch.interpreting():
        return None
    return f"the FP8 Triton GEMM runs on CUDA GPUs (or under TRITON_INTERPRET=1), not on {device.type}"


def fp8_supported(device: torch.device | str) -> bool:
    return fp8_unsupported_reason(device) is None


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


# --- custom ops and the public functions ------------------------------------------------------------
@torch.library.custom_op("sapiens2_edge::int8_gemm", mutates_args=())
def int8_gemm_op(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
                 bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    if switch.use_triton(a.device.type):
        return launch_scaled_gemm(a, w, a_scale, w_scale, bias, out_dtype)
    return int8_gemm_reference(a, w, a_scale, w_scale, bias, out_dtype)


@torch.library.custom_op("sapiens2_edge::fp8_gemm", mutates_args=())
def fp8_gemm_op(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    if switch.use_triton(a.device.type):
        reason = fp8_unsupported_reason(a.device)
        if reason is None:
            return launch_scaled_gemm(a, w, a_scale, w_scale, bias, out_dtype)
        if switch.mode() == "triton":
            raise ConfigError(f"{switch.ENV}=triton: {reason}")
    return fp8_gemm_reference(a, w, a_scale, w_scale, bias, out_dtype)


@int8_gemm_op.register_fake
def _(a, w, a_scale, w_scale, bias, out_dtype):
    return a.new_empty(a.shape[0], w.shape[0], dtype=out_dtype)


@fp8_gemm_op.register_fake
def _(a, w, a_scale, w_scale, bias, out_dtype):
    return a.new_empty(a.shape[0], w.shape[0], dtype=out_dtype)


def int8_gemm(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
              bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(a @ w.T) * (a_scale * w_scale) + bias`` for int8 a (M, K), w (N, K): int32 accumulation,
    dequantization and bias fused in the Triton kernel's epilogue; output (M, N) in ``out_dtype``."""
    check_gemm_inputs(a, w, a_scale, w_scale, bias, out_dtype, torch.int8, "int8_gemm")
    return int8_gemm_op(a, w, a_scale.reshape(-1, 1), w_scale.reshape(-1), bias, out_dtype)


def fp8_gemm(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
             bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(a @ w.T) * (a_scale * w_scale) + bias`` for float8_e4m3fn a (M, K), w (N, K) with
    per-token and per-channel (or per-tensor) float32 scales; fp32 accumulation, fused epilogue."""
    check_gemm_inputs(a, w, a_scale, w_scale, bias, out_dtype, torch.float8_e4m3fn, "fp8_gemm")
    return fp8_gemm_op(a, w, a_scale.reshape(-1, 1), w_scale.reshape(-1), bias, out_dtype)


__all__ = ["int8_gemm", "int8_gemm_op", "fp8_gemm", "fp8_gemm_op", "fp8_supported", "fp8_unsupported_reason",
           "check_gemm_inputs", "launch_scaled_gemm", "LAUNCHES", "OUT_DTYPES", "MIN_CAPABILITY"]
