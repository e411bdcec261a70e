"""``sapiens2_edge::quant_rows``: the custom op behind :func:`rmsnorm_quant` and :func:`per_token_quant`.

The op runs the Triton kernel where :func:`~sapiens2_edge.kernels.dispatch.use_triton` says so
(CUDA by default, the interpreter when forced) and the reference elsewhere; its fake kernel
gives ``torch.compile`` / ``torch.export`` the output shapes.
"""

from __future__ import annotations

import torch

from ...errors import ConfigError, InvalidTensorError
from ..dispatch import use_triton
from .reference import quant_rows_reference

QDTYPES = ("int8", "fp8")
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


@torch.library.custom_op("sapiens2_edge::quant_rows", mutates_args=())
def quant_rows(x: torch.Tensor, weight: torch.Tensor | None, eps: float, dtype: str,
               static_scale: torch.Tensor | None, prefix_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    if use_triton(x.device.type):
        from .kernel import launch_quant_rows

        k = x.shape[-1]
        seq_len = x.shape[1] if x.ndim == 3 else 1
        prefix = prefix_tokens if x.ndim == 3 and static_scale is not None else 0
        w = weight.contiguous() if weight is not None else None
        return launch_quant_rows(x.reshape(-1, k).contiguous(), w, eps, dtype, static_scale, prefix, seq_len)
    return quant_rows_reference(x, weight, eps, dtype, static_scale, prefix_tokens)


@quant_rows.register_fake
def _(x, weight, eps, dtype, static_scale, prefix_tokens):
    k = x.shape[-1]
    m = x.numel() // k
    qd = torch.int8 if dtype == "int8" else torch.float8_e4m3fn
    return x.new_empty(m, k, dtype=qd), x.new_empty(m, 1, dtype=torch.float32)


def _check(x: torch.Tensor, weight: torch.Tensor | None, dtype: str, static_scale: torch.Tensor | None) -> None:
    if dtype not in QDTYPES:
        raise ConfigError(f"quantized dtype {dtype!r} is not supported; expected one of {', '.join(QDTYPES)}")
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.dtype not in _FLOATS or x.shape[-1] == 0:
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidTensorError(f"expected a float32/float16/bfloat16 tensor (..., K) with K > 0, got {got}")
    k = x.shape[-1]
    if weight is not None and (weight.ndim != 1 or weight.shape[0] != k):
        raise InvalidTensorError(f"norm weight must have shape ({k},) to match the input's last dimension, "
                                 f"got {tuple(weight.shape)}")
    if static_scale is not None and static_scale.numel() != 1:
        raise InvalidTensorError(f"static_scale must hold one value (a per-tensor scale), got shape "
                                 f"{tuple(static_scale.shape)}")


def rmsnorm_quant(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, dtype: str = "int8",
                  static_scale: torch.Tensor | None = None, prefix_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of x (..., K) with ``weight`` (K,), quantized per token (or with ``static_scale``,
    the first ``prefix_tokens`` tokens of each sequence of a (B, T, K) input keeping their own
    dynamic scale). Returns (q (M, K), scale (M, 1) float32) with ``q * scale ~= rms_norm(x)``."""
    _check(x, weight, dtype, static_scale)
    return quant_rows(x, weight, float(eps), dtype, static_scale, int(prefix_tokens))


def per_token_quant(x: torch.Tensor, dtype: str = "int8", static_scale: torch.Tensor | None = None,
                    prefix_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The same quantization without the norm: what ``QuantLinear`` does to its input."""
    _check(x, None, dtype, static_scale)
    return quant_rows(x, None, 0.0, dtype, static_scale, int(prefix_tokens))


__all__ = ["quant_rows", "rmsnorm_quant", "per_token_quant", "QDTYPES"]
