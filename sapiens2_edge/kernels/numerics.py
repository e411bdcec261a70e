"""Quantization arithmetic: scales, rounding, the int8 GEMM and its exact emulation, SQNR.

Conventions (used everywhere in the package and in the checkpoint format):

* int8 is symmetric with range [-127, 127] (-128 is never produced), ``scale = absmax / 127``,
  ``q = clamp(round(x / scale), -127, 127)`` with round-half-to-even, ``x ~= q * scale``.
* fp8 is E4M3 (``torch.float8_e4m3fn``: max 448, subnormals down to 2**-9, no inf),
  ``scale = absmax / 448``, ``q = cast(clamp(x / scale, -448, 448))`` (torch's cast rounds to
  nearest even).
* Scales are float32. An all-zero row gets the scale ``EPS_SCALE`` so nothing divides by zero.
* int4 (weights only) is symmetric group-wise along the input dimension: ``q`` in [-8, 7], one
  float16 scale per ``group_size`` consecutive inputs of a row, ``x ~= q * scale``. Stored packed
  two to a byte as unsigned nibbles ``q + 8``, element ``2i`` in the low nibble and ``2i+1`` in
  the high one: the (N, K/2) uint8 tensor is, reshaped to (N, K/G, G/2), ONNX Runtime's
  ``MatMulNBits`` ``B`` layout with its default zero point 8.
"""

from __future__ import annotations

import functools
import math

import torch

from .switch import exporting

INT8_MAX = 127.0
FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8_DTYPE = torch.float8_e4m3fn
EPS_SCALE = 1e-12


def qmax_of(dtype: str) -> float:
    return INT8_MAX if dtype == "int8" else FP8_MAX


def _safe(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale > 0, scale, torch.full_like(scale, EPS_SCALE))


# --- weights --------------------------------------------------------------------------------------
def weight_scales(w: torch.Tensor, dtype: str, granularity: str = "per_channel") -> torch.Tensor:
    """float32 scales of a (N, K) weight: shape (N,) per channel, (1,) per tensor."""
    a = w.detach().float().abs()
    amax = a.amax(dim=1) if granularity == "per_channel" else a.amax().reshape(1)
    return _safe(amax / qmax_of(dtype)).float()


def quantize_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``clamp(round(x / scale), -127, 127)`` as int8; ``scale`` broadcasts against ``x``."""
    return torch.clamp(torch.round(x.float() / scale), -INT8_MAX, INT8_MAX).to(torch.int8)


def to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round float values to float8_e4m3fn, saturating at +-448 (never NaN for finite input)."""
    return torch.clamp(x.float(), -FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return to_e4m3(x.float() / scale)


def quantize_weight(w: torch.Tensor, dtype: str, granularity: str = "per_channel") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, K) float weight -> (quantized weight, float32 scale or None for fp16)."""
    if dtype == "fp16":
        return w.detach().to(torch.float16), None
    scale = weight_scales(w, dtype, granularity)
    s = scale[:, None] if scale.numel() > 1 else scale
    q = quantize_int8(w, s) if dtype == "int8" else quantize_fp8(w, s)
    return q, scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """float32 (N, K) from a stored weight and its scale (packed int4: uint8 with (N, K/G) scales)."""
    if q.dtype == torch.uint8:
        return dequantize_int4(q, scale)
    if scale is None:
        return q.float()
    return q.float() * (scale[:, None] if scale.numel() > 1 else scale)


# --- int4 weights -------------------------------------------------------------------------------
INT4_MIN, INT4_MAX = -8, 7
INT4_ZERO = 8  # the unsigned nibble of q = 0
INT4_MIN_SCALE = 2.0 ** -14  # smallest normal float16: group scales are stored as float16
#: shrink factors of ``absmax / 7`` the MSE scale search tries (1.0 = the plain absmax scale)
INT4_SEARCH_GRID = tuple(round(1.0 - 0.02 * i, 2) for i in range(16))


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int (N, K) values in [-8, 7], K even -> uint8 (N, K/2): nibbles ``q + 8``, even k low."""
    u = (q.to(torch.int16) + INT4_ZERO).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (N, K/2) -> int8 (N, K) in [-8, 7] (the inverse of :func:`pack_int4`)."""
    lo = (packed & 0x0F).to(torch.int8) - INT4_ZERO
    hi = (packed >> 4).to(torch.int8) - INT4_ZERO
    return torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def _int4_round(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(w / s), INT4_MIN, INT4_MAX)


def _int4_scale(amax: torch.Tensor, r: float) -> torch.Tensor:
    return torch.clamp(amax * r / INT4_MAX, min=INT4_MIN_SCALE).half().float()


def _search_scales(g: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """Per group (last dim of ``g``) the candidate scale with the least squared error."""
    buf = torch.empty_like(g)
    best = err = None
    for r in INT4_SEARCH_GRID:
        s = _int4_scale(amax, r)
        torch.div(g, s, out=buf)
        buf.round_().clamp_(INT4_MIN, INT4_MAX).mul_(s).sub_(g).square_()
        e = buf.sum(dim=-1, keepdim=True)
        if best is None:
            best, err = s, e
        else:
            better = e < err
            best, err = torch.where(better, s, best), torch.minimum(e, err)
    return best


def quantize_int4(w: torch.Tensor, group_size: int, search: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float weight -> (packed uint8 (N, K/2), float16 scales (N, K/group_size)).

    The scale of a group is ``absmax / 7``, or with ``search`` the one of ``absmax / 7 * r``
    (r in :data:`INT4_SEARCH_GRID`, each rounded to float16 first) with the least squared error
    of the group's weights; a smaller scale clips the largest weight to rather represent the rest."""
    n, k = w.shape
    g = w.detach().float().reshape(n, k // group_size, group_size)
    amax = g.abs().amax(dim=-1, keepdim=True)
    best = _int4_scale(amax, 1.0)
    if search:
        rows = max(1, (1 << 18) // k)  # chunks of ~1 MB stay in cache through the candidates
        for i in range(0, n, rows):
            best[i:i + rows] = _search_scales(g[i:i + rows], amax[i:i + rows])
    q = _int4_round(g, best).reshape(n, k)
    return pack_int4(q), best.reshape(n, k // group_size).half()


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 (N, K) from packed int4 (N, K/2) and its (N, K/G) scales."""
    q = unpack_int4(packed).float()
    n, k = q.shape
    groups = scale.shape[-1]
    return (q.reshape(n, groups, k // groups) * scale.float().reshape(n, groups, 1)).reshape(n, k)


# --- activations ----------------------------------------------------------------------------------
def token_scales(x2: torch.Tensor, dtype: str) -> torch.Tensor:
    """Dynamic per-token scales: (M, K) -> (M, 1) float32 ``absmax(row) / qmax``."""
    return _safe(x2.float().abs().amax(dim=1, keepdim=True) / qmax_of(dtype))


def activation_scales(x: torch.Tensor, dtype: str, static_scale: torch.Tensor | None = None,
                      prefix_tokens: int = 0) -> torch.Tensor:
    """Per-row scales (M, 1) for ``x`` of shape (..., K) flattened to M rows.

    Without ``static_scale`` every row gets its dynamic per-token scale. With it, every row gets
    the static scale except the first ``prefix_tokens`` tokens of each sequence (x of shape
    (B, T, K)), which keep their own dynamic scale because they were left out of the calibrated
    range.
    """
    k = x.shape[-1]
    if static_scale is None:
        return token_scales(x.reshape(-1, k), dtype)
    m = x.numel() // k
    s = static_scale.float().reshape(1, 1).expand(m, 1).clone()
    if x.ndim == 3 and prefix_tokens > 0 and m:
        p = min(prefix_tokens, x.shape[1])
        s.view(x.shape[0], x.shape[1], 1)[:, :p] = _safe(x[:, :p].float().abs().amax(dim=-1, keepdim=True) / qmax_of(dtype))
    return s


def quantize_activation(x2: torch.Tensor, scales: torch.Tensor, dtype: str) -> torch.Tensor:
    return quantize_int8(x2, scales) if dtype == "int8" else quantize_fp8(x2, scales)


# --- int8 GEMM ------------------------------------------------------------------------------------
def int_mm_supported(m: int, k: int, n: int) -> bool:
    """Shapes ``torch._int_mm`` takes on every device: more than 16 rows, K and N multiples of 8."""
    return hasattr(torch, "_int_mm") and m > 16 and k % 8 == 0 and n % 8 == 0


def int8_matmul_reference(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exact ``a @ w.T`` for int8 a (M, K), w (N, K) -> int32 (M, N).

    Accumulated in float64, which is exact: |products| <= 127**2 and the sum stays far below
    2**53 for any K < 5e11.
    """
    return (a.to(torch.float64) @ w.to(torch.float64).t()).to(torch.int32)


#: K per float32 GEMM in :func:`int8_matmul_fp32`: int8 products are at most 2**14 in magnitude
#: (|q| <= 128), so any partial sum of 1024 of them is an integer of at most 2**24, which float32
#: holds exactly whatever order the GEMM adds in.
FP32_EXACT_K = 1024


def _fp32_matmul_is_ieee() -> bool:
    """Whether torch's CPU float32 matmuls are plain float32 (no bf16 / tf32 shortcut asked for)."""
    generic = getattr(torch.backends, "fp32_precision", "none")
    mkldnn = getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", "none")
    return generic in ("none", "ieee") and mkldnn in ("none", "ieee")


def int8_matmul_fp32(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exact ``a @ w.T`` for int8 a (M, K), w (N, K) -> int32 (M, N) from float32 GEMMs over K slices
    of :data:`FP32_EXACT_K`, summed in int32: the same integers as ``torch._int_mm``, at float32 GEMM
    speed, for CPUs whose ``torch._int_mm`` has no int8 dot-product kernel to run (a plain loop,
    ~35x slower than float32 on an AVX2 EPYC). Falls back to float64 if float32 matmuls are set to
    round through bf16 or tf32."""
    if not _fp32_matmul_is_ieee():
        return int8_matmul_reference(a, w)
    return _sliced_products(a.float(), w.float())


def _sliced_products(af: torch.Tensor, wf: torch.Tensor) -> torch.Tensor:
    """int32 ``af @ wf.T`` of int8 values held as float32, one float32 GEMM per K slice of
    :data:`FP32_EXACT_K` (each exact), the slices added in int32."""
    acc = None
    for s in range(0, af.shape[1], FP32_EXACT_K):
        part = (af[:, s:s + FP32_EXACT_K] @ wf[:, s:s + FP32_EXACT_K].t()).to(torch.int32)
        acc = part if acc is None else acc.add_(part)
    return acc


def int8_products_in_fp32(x: torch.Tensor) -> bool:
    """Whether int8 products of ``x`` run as float32 GEMMs (:func:`int8_matmul_float`): on a CPU without
    int8 dot products, outside an export (whose program holds the int8 op)."""
    return x.device.type == "cpu" and not _cpu_int8_dot() and not exporting()


def int8_matmul_float(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``int8_matmul(values.to(int8), w).float()`` for float32 ``values`` (M, K) that are int8 integers
    (a quantized activation before its cast) and int8 w (N, K), without the casts: for K up to
    :data:`FP32_EXACT_K` one float32 GEMM is the exact integers already; longer K sums its slices in int32,
    then rounds once to float32, as the int32 result's conversion does."""
    if not _fp32_matmul_is_ieee():
        return int8_matmul_reference(values.to(torch.int8), w).float()
    wf = w.float()
    if values.shape[1] <= FP32_EXACT_K:
        return values @ wf.t()
    return _sliced_products(values, wf).float()


@functools.lru_cache(maxsize=1)
def _cpu_int8_dot() -> bool:
    from ..cpu_features import int8_dot_products

    return int8_dot_products()[0]


def int8_matmul(a: torch.Tensor, w: torch.Tensor, allow_int_mm: bool = True) -> torch.Tensor:
    """int8 (M, K) x int8 (N, K) -> int32 (M, N), the same integers on every path: ``torch._int_mm``
    when the shape allows it (on a CPU, one with int8 dot products, or while exporting, where it is
    the program's op), :func:`int8_matmul_fp32` on other CPUs, otherwise the exact emulation."""
    m, k = a.shape
    n = w.shape[0]
    if not allow_int_mm:
        return int8_matmul_reference(a, w)
    if int8_products_in_fp32(a):
        return int8_matmul_fp32(a, w)
    if int_mm_supported(m, k, n):
        try:
            return torch._int_mm(a.contiguous(), w.t())
        except RuntimeError:  # a backend without the kernel for this layout
            pass
    return int8_matmul_reference(a, w)


# --- metrics --------------------------------------------------------------------------------------
def sqnr_db(signal_energy: float, noise_energy: float) -> float:
    """10 log10(signal / noise); inf when there is no noise."""
    if noise_energy <= 0.0:
        return math.inf
    if signal_energy <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_energy / noise_energy)


def tensor_sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    ref, approx = ref.detach().double(), approx.detach().double()
    return sqnr_db(float((ref * ref).sum()), float(((ref - approx) ** 2).sum()))


__all__ = [
    "INT8_MAX", "FP8_MAX", "FP8_DTYPE", "weight_scales", "quantize_int8", "to_e4m3", "quantize_fp8",
    "quantize_weight", "dequantize_weight", "pack_int4", "unpack_int4", "quantize_int4", "dequantize_int4", "token_scales", "activation_scales", "quantize_activation",
    "int_mm_supported", "int8_matmul", "int8_matmul_reference", "int8_matmul_float", "int8_products_in_fp32", "sqnr_db", "tensor_sqnr_db",
]
