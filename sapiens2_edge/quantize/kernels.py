"""Kernel registry: where faster GEMMs (the Triton kernels of a later issue) plug into
:class:`~sapiens2_edge.quantize.linear.QuantLinear`.

A kernel is ``fn(layer, x) -> Tensor | NotImplemented``: it gets the :class:`QuantLinear` (its
``weight``, ``weight_scale``, ``input_scale``, ``bias``, ``config``, ``prefix_tokens``) and the
float input (..., K), and returns the float output (..., N) in ``x.dtype``, or
``NotImplemented`` to decline (shape, device or scheme it does not handle), in which case the
built-in path runs. Selecting one::

    register_kernel("triton", my_fn, device_types=("cuda",), schemes=("int8", "fp8"))
    qmodel.set_kernel("triton")           # or layer.kernel = "triton"

Built-in names: ``auto`` (``torch._int_mm`` / ``torch._scaled_mm`` where the device and shape
allow, exact emulation otherwise) and ``reference`` (always the exact emulation).
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


__all__ = ["register_kernel", "unregister_kernel", "available_kernels", "check_kernel", "get_kernel", "BUILTIN_KERNELS"]
