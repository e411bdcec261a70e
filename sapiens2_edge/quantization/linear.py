"""``QuantLinear``: the one module that replaces ``nn.Linear`` in a quantized model.

It holds the stored weight (int8, float8_e4m3fn, float16, or int4 packed two to a uint8 byte), its
``weight_scale`` (float32; float16 per group for int4), an
optional calibrated ``input_scale`` and the float32 ``bias`` as buffers, so ``state_dict()`` is
the quantized checkpoint layout under the official tensor names. ``forward`` dispatches:

=============== ==============================================================================
int8-weight     ``w_int8.float() * scale`` per call (no fp32 copy of the model is kept), fp32 GEMM
int4-weight     the packed nibbles unpacked and multiplied by their group scales per call, fp32 GEMM
int8 (W8A8)     activations -> int8 per token (or static per tensor), int8 x int8 -> int32 with
                ``torch._int_mm`` (M > 16, K and N multiples of 8) or its exact emulation, then
                ``acc * (s_act * s_w) + bias`` in fp32
fp8             activations -> E4M3 per token (or static); ``torch._scaled_mm`` on CUDA with
                compute capability >= 8.9, otherwise exact emulation: the fp8 values dequantized
                and multiplied in fp32
fp16            CUDA: fp16 GEMM. CPU: the fp16 weight is cast to fp32 per call and the GEMM
                runs in fp32 (CPU fp16 GEMMs are slow and not always available); the stored
                weight is what changes the numbers
=============== ==============================================================================

A kernel registered in :mod:`.kernels` and selected with ``layer.kernel = name`` runs first. With
``kernel = "auto"`` (the default) the W8A8 int8 / fp8 layers run the fused Triton kernels where
:mod:`sapiens2_edge.kernels.switch` allows (CUDA tensors by default; the
``SAPIENS2_EDGE_KERNELS`` switch forces either way); on CPU nothing changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import numerics as nx
from ..kernels.switch import exporting
from .config import LayerQuantConfig
from .decomposed import DecomposedLinear
from .kernels import auto_kernel, check_kernel, get_kernel

_STORE_DTYPES = {"int8": torch.int8, "int4": torch.uint8, "fp8": nx.FP8_DTYPE, "fp16": torch.float16}


class QuantLinear(nn.Module):
    """A quantized linear layer. Build with :meth:`from_float` or (for loading) the constructor."""

    def __init__(self, in_features: int, out_features: int, config: LayerQuantConfig, bias: bool = True,
                 prefix_tokens: int = 0, device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.config = config
        self.prefix_tokens = prefix_tokens
        self.kernel = "auto"
        self.auto_kernel = auto_kernel(config.scheme)  # what "auto" runs first, chosen once
        wd = config.weight.dtype
        if wd == "int4":
            g = config.weight.group_size
            if in_features % g:
                from ..errors import ConfigError

                raise ConfigError(f"int4 group_size {g} does not divide this layer's {in_features} inputs; choose a "
                                  f"group size that divides every quantized layer's input width (e.g. 32)")
            self.register_buffer("weight", torch.full((out_features, in_features // 2), 0x88, dtype=torch.uint8,
                                                      device=device))
            self.register_buffer("weight_scale", torch.ones(out_features, in_features // g, dtype=torch.float16,
                                                            device=device))
        else:
            self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=_STORE_DTYPES[wd],
                                                       device=device))
        if wd not in ("fp16", "int4"):
            n = out_features if config.weight.granularity == "per_channel" else 1
            self.register_buffer("weight_scale", torch.ones(n, dtype=torch.float32, device=device))
        elif wd == "fp16":
            self.weight_scale = None
        if config.activation is not None and config.activation.mode == "static":
            self.register_buffer("input_scale", torch.ones(1, dtype=torch.float32, device=device))
        else:
            self.input_scale = None
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device))
        else:
            self.bias = None

    @property
    def scheme(self) -> str:
        return self.config.scheme

    @classmethod
    def from_float(cls, linear: nn.Linear, config: LayerQuantConfig, prefix_tokens: int = 0,
                   input_scale: torch.Tensor | None = None) -> "QuantLinear":
        w = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, config, linear.bias is not None, prefix_tokens, w.device)
        if config.weight.dtype == "int4":
            q, scale = nx.quantize_int4(w, config.weight.group_size, config.weight.scale_method == "mse")
        else:
            q, scale = nx.quantize_weight(w, config.weight.dtype, config.weight.granularity)
        layer.weight.copy_(q)
        if scale is not None:
            layer.weight_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        if layer.input_scale is not None:
            if input_scale is None:
                from ..errors import CalibrationError

                raise CalibrationError(f"static activations ({config.scheme}) need a calibrated input scale; none was given")
            layer.input_scale.copy_(input_scale.reshape(1).float())
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight this layer computes with (for reports and tests)."""
        return nx.dequantize_weight(self.weight, self.weight_scale)

    def decompose(self) -> DecomposedLinear:
        """The export form every exporter maps to its format's ops (see :mod:`.decomposed`)."""
        act = self.config.activation
        static = act is not None and act.mode == "static"
        return DecomposedLinear(
            weight=self.weight.detach(), weight_scale=None if self.weight_scale is None else self.weight_scale.detach(),
            bias=None if self.bias is None else self.bias.detach(), weight_dtype=self.config.weight.dtype,
            act_dtype=None if act is None else act.dtype, act_mode="none" if act is None else act.mode,
            input_scale=self.input_scale.detach().float().reshape(()) if static else None,
            prefix_tokens=int(self.prefix_tokens) if static else 0)

    def extra_repr(self) -> str:
        act = self.config.activation
        a = f"{act.dtype} {act.mode}" if act else "float"
        return (f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}, "
                f"weight={self.config.weight.dtype} {self.config.weight.granularity}"
                f"{f' {self.config.weight.group_size}' if self.config.weight.group_size else ''}, activations={a}, "
                f"kernel={self.kernel}")

    def set_kernel(self, name: str) -> None:
        self.kernel = check_kernel(name)

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel != "reference":
            entry = self.auto_kernel if self.kernel == "auto" else get_kernel(self.kernel)
            if entry is not None and x.device.type in entry.device_types and self.scheme in entry.schemes:
                out = entry.fn(self, x)
                if out is not NotImplemented:
                    return out
        fast = self.kernel != "reference"
        wd = self.config.weight.dtype
        if self.config.activation is None:
            if wd == "fp16":
                if x.is_cuda and fast:
                    b = self.bias.half() if self.bias is not None else None
                    return F.linear(x.half(), self.weight, b).to(x.dtype)
                return F.linear(x.float(), self.weight.float(), self.bias).to(x.dtype)
            return F.linear(x.float(), self.dequantized_weight(), self.bias).to(x.dtype)
        return self._forward_w8a8(x, fast)

    def _forward_w8a8(self, x: torch.Tensor, fast: bool) -> torch.Tensor:
        act = self.config.activation
        k = x.shape[-1]
        x2 = x.reshape(-1, k).float()
        s_a = nx.activation_scales(x, act.dtype, self.input_scale, self.prefix_tokens)
        s_w = self.weight_scale.reshape(1, -1)
        y = None
        if act.dtype == "int8":
            # nx.quantize_int8 and acc.float() * s with in-place steps: the same values, without the
            # temporaries (at 3081 tokens each is tens of MB, and fresh pages cost more than the math)
            values = torch.div(x2, s_a).round_().clamp_(-nx.INT8_MAX, nx.INT8_MAX)
            if fast and nx.int8_products_in_fp32(values):  # float32 GEMMs: no casts to int8 and back
                acc = nx.int8_matmul_float(values, self.weight)
            else:
                acc = nx.int8_matmul(values.to(torch.int8), self.weight, allow_int_mm=fast)
            y = _scaled(acc, s_a, s_w)
        else:
            q = nx.quantize_activation(x2, s_a, act.dtype)
            if fast and x.is_cuda:
                y = _scaled_mm_fp8(q, self.weight, s_a, s_w)
            if y is None:
                y = _scaled(q.float() @ self.weight.float().t(), s_a, s_w)
        if self.bias is not None:
            y = y.add_(self.bias) if act.dtype == "int8" else y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


#: rows of an int8 product rescaled per call of :func:`_scaled` (its block of scales stays about 4 MiB)
_SCALE_BLOCK_FLOATS = 1 << 20


def _scaled(acc: torch.Tensor, s_a: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
    """``acc * (s_a * s_w)`` in float32 (the scales' product rounded first, as every runtime computes it),
    written into ``acc``'s memory (int32 products turn into float32 there) block of rows by block: the
    (M, N) product of the scales is never made whole on a CPU (100 MB for a 0.4b FFN at 3081 tokens). A
    GPU's, and a traced or compiled forward, keep one multiplication (one kernel launch; the exported
    program's graph is not unrolled by rows)."""
    out = acc if acc.dtype == torch.float32 else acc.view(torch.float32)
    if s_a.shape[0] == 1 or acc.device.type != "cpu" or exporting() or torch.compiler.is_compiling():
        return torch.mul(acc, s_a * s_w, out=out)
    rows = max(1, _SCALE_BLOCK_FLOATS // max(1, acc.shape[1]))
    for r in range(0, acc.shape[0], rows):
        torch.mul(acc[r:r + rows], s_a[r:r + rows] * s_w, out=out[r:r + rows])
    return out


def _scaled_mm_fp8(a: torch.Tensor, w: torch.Tensor, s_a: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor | None:
    """fp8 GEMM with row-wise scales on GPUs that have it (sm_89+); None when unavailable."""
    if not hasattr(torch, "_scaled_mm") or torch.cuda.get_device_capability(a.device) < (8, 9):
        return None
    m, k = a.shape
    n = w.shape[0]
    if k % 16 or n % 16:
        return None
    sw = s_w.reshape(1, n).expand(1, n).contiguous().float()
    try:
        out = torch._scaled_mm(a.contiguous(), w.t(), scale_a=s_a.reshape(m, 1).contiguous().float(), scale_b=sw,
                               out_dtype=torch.bfloat16)
    except (RuntimeError, TypeError):
        return None
    return out.float()


__all__ = ["QuantLinear"]
