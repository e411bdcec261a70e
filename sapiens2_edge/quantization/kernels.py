"""Kernel registry: where faster GEMMs plug into :class:`~sapiens2_edge.quantization.linear.QuantLinear`,
and the glue between QuantLinear and the Triton kernels of :mod:`sapiens2_edge.kernels`.

A kernel is ``fn(layer, x) -> Tensor | NotImplemented``: it gets the :class:`QuantLinear` (its
``weight``, ``weight_scale``, ``input_scale``, ``bias``, ``config``, ``prefix_tokens``) and the
float input (..., K), and returns the float output (..., N) in ``x.dtype``, or
``NotImplemented`` to decline (shape, device or scheme it does not handle), in which case the
built-in path runs. Selecting one::

    register_kernel("triton", my_fn, device_types=("cuda",), schemes=("int8", "fp8"))
    qmodel.set_kernel("triton")           # or layer.kernel = "triton"

Built-in names: ``auto`` (the ``triton`` kernel, chosen when the layer is built by
:func:`auto_kernel` from :mod:`sapiens2_edge.kernels.switch`, which runs where the tensor's device
allows, i.e. on CUDA by default; then ``torch._int_mm`` / ``torch._scaled_mm`` where the device
and shape allow, exact emulation otherwise) and ``reference`` (always the exact emulation).
``triton`` is pre-registered: the W8A8 int8 / fp8 layers through the fused Triton kernels of
:mod:`sapiens2_edge.kernels` (per-token quantization in one pass, GEMM with the dequantization and
bias in its epilogue). It declines while a model is exported (ONNX / Core ML / torch.export record
the reference decomposition) and where the kernel switch or the GPU rules Triton out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError
from ..kernels import switch

BUILTIN_KERNELS = ("auto", "reference")


@dataclass(frozen=True)
class KernelEntry:
    name: str
    fn: Callable[[Any, Any], Any]
    device_types: tuple[str, ...]
    schemes: tuple[str, ...]


_REGISTRY: dict[str, KernelEntry] = {}


def register_kernel(name: str, fn: Callable[[Any, Any], Any], *, device_types=("cuda",),
                    schemes=("int8-weight", "int8", "fp8", "fp16"), overwrite: bool = False) -> None:
    if name in BUILTIN_KERNELS:
        raise ConfigError(f"kernel name {name!r} is reserved for a built-in path; pick another name")
    if name in _REGISTRY and not overwrite:
        raise ConfigError(f"a kernel named {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = KernelEntry(name, fn, tuple(device_types), tuple(schemes))


def unregister_kernel(name: str) -> None:
    _REGISTRY.pop(name, None)


def available_kernels() -> tuple[str, ...]:
    return BUILTIN_KERNELS + tuple(_REGISTRY)


def check_kernel(name: str) -> str:
    if name not in BUILTIN_KERNELS and name not in _REGISTRY:
        raise ConfigError(f"unknown kernel {name!r}; expected one of {', '.join(available_kernels())}")
    return name


def get_kernel(name: str) -> KernelEntry | None:
    return _REGISTRY.get(name)


TRITON_SCHEMES = ("int8", "fp8")


def triton_w8a8(layer: Any, x: Any) -> Any:
    """The ``triton`` kernel: W8A8 int8 / fp8 ``QuantLinear.forward`` through the Triton ops."""
    import torch

    act = layer.config.activation
    if (act is None or layer.scheme not in TRITON_SCHEMES or x.dtype not in (torch.float32, torch.float16, torch.bfloat16)
            or not switch.enabled(x)):
        return NotImplemented
    from ..kernels.scaled_gemm import op as gemm_ops
    from ..kernels.token_quant.op import per_token_quant

    if act.dtype == "fp8" and not gemm_ops.fp8_supported(x.device):
        return NotImplemented
    gemm = gemm_ops.fp8_gemm if act.dtype == "fp8" else gemm_ops.int8_gemm
    q, s_a = per_token_quant(x, act.dtype, layer.input_scale, layer.prefix_tokens)
    y = gemm(q, layer.weight, s_a, layer.weight_scale, layer.bias, out_dtype=x.dtype)
    return y.reshape(*x.shape[:-1], layer.out_features)


def auto_kernel(scheme: str) -> KernelEntry | None:
    """The registered kernel a layer of ``scheme`` built now runs first under ``kernel="auto"``:
    decided once, at construction (the kernel itself still declines where the device rules it out)."""
    if scheme not in TRITON_SCHEMES or not switch.fused_default():
        return None
    return _REGISTRY.get("triton")


register_kernel("triton", triton_w8a8, device_types=("cuda", "cpu"), schemes=TRITON_SCHEMES)

__all__ = ["register_kernel", "auto_kernel", "triton_w8a8", "TRITON_SCHEMES", "unregister_kernel", "available_kernels", "check_kernel", "get_kernel", "BUILTIN_KERNELS"]
