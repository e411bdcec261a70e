"""Kernel registry: where faster GEMMs (the Triton kernels of a later issue) plug into
:class:`~sapiens2_edge.quantization.linear.QuantLinear`.

A kernel is ``fn(layer, x) -> Tensor | NotImplemented``: it gets the :class:`QuantLinear` (its
``weight``, ``weight_scale``, ``input_scale``, ``bias``, ``config``, ``prefix_tokens``) and the
float input (..., K), and returns the float output (..., N) in ``x.dtype``, or
``NotImplemented`` to decline (shape, device or scheme it does not handle), in which case the
built-in path runs. Selecting one::

    register_kernel("triton", my_fn, device_types=("cuda",), schemes=("int8", "fp8"))
    qmodel.set_kernel("triton")           # or layer.kernel = "triton"

Built-in names: ``auto`` (the ``triton`` kernel where :func:`sapiens2_edge.kernels.dispatch.use_triton`
says so, i.e. on CUDA by default; then ``torch._int_mm`` / ``torch._scaled_mm`` where the device
and shape allow, exact emulation otherwise) and ``reference`` (always the exact emulation).
``triton`` is pre-registered: the W8A8 int8 / fp8 layers through the fused Triton kernels of
:mod:`sapiens2_edge.kernels` (per-token quantization in one pass, GEMM with the dequantization and
bias in its epilogue). It declines while ``torch.export`` traces (ONNX / Core ML export records
the reference decomposition) and where the dispatch switch or the GPU rules Triton out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError

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

    from ..kernels.dispatch import use_triton

    act = layer.config.activation
    if (act is None or layer.scheme not in TRITON_SCHEMES or torch.compiler.is_exporting() or torch.jit.is_tracing()
            or x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or not use_triton(x.device.type)):
        return NotImplemented
    if act.dtype == "fp8":
        from ..kernels.fp8_gemm import fp8_gemm as gemm
        from ..kernels.fp8_gemm import fp8_supported

        if not fp8_supported(x.device):
            return NotImplemented
    else:
        from ..kernels.int8_gemm import int8_gemm as gemm
    from ..kernels.rmsnorm_quant import per_token_quant

    q, s_a = per_token_quant(x, act.dtype, layer.input_scale, layer.prefix_tokens)
    y = gemm(q, layer.weight, s_a, layer.weight_scale, layer.bias, out_dtype=x.dtype)
    return y.reshape(*x.shape[:-1], layer.out_features)


def auto_kernel(device_type: str, scheme: str) -> KernelEntry | None:
    """The registered kernel the ``auto`` path tries first on ``device_type``, if any."""
    if scheme not in TRITON_SCHEMES:
        return None
    from ..kernels.dispatch import use_triton

    return _REGISTRY.get("triton") if use_triton(device_type) else None


register_kernel("triton", triton_w8a8, device_types=("cuda", "cpu"), schemes=TRITON_SCHEMES)

__all__ = ["register_kernel", "auto_kernel", "triton_w8a8", "TRITON_SCHEMES", "unregister_kernel", "available_kernels", "check_kernel", "get_kernel", "BUILTIN_KERNELS"]
