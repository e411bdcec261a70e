"""Which implementation a kernel call uses: the Triton kernel or its pure-torch reference.

``SAPIENS2_EDGE_KERNELS`` forces the choice for every kernel:
  ``auto`` (default)  Triton on CUDA tensors when Triton is installed, the reference elsewhere;
  ``triton``          always Triton (on CPU tensors this needs ``TRITON_INTERPRET=1``);
  ``reference``       always the pure-torch reference (what ONNX / Core ML export traces).
"""

from __future__ import annotations

import functools
import importlib.util
import os

from ..errors import ConfigError

ENV = "SAPIENS2_EDGE_KERNELS"
MODES = ("auto", "triton", "reference")


def mode() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ConfigError(f"{ENV}={value!r} is not a kernel mode; expected one of {', '.join(MODES)}")
    return value


@functools.cache
def triton_available() -> bool:
    """Looked up once: every attention block and quantized linear asks on each call."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def use_triton(device_type: str) -> bool:
    """Whether a kernel called on tensors of ``device_type`` runs its Triton implementation."""
    m = mode()
    if m == "reference":
        return False
    if m == "triton":
        if not triton_available():
            raise ConfigError(f"{ENV}=triton but Triton is not installed: pip install 'sapiens2-edge[triton]'")
        if device_type != "cuda" and not interpreting():
            raise ConfigError(f"{ENV}=triton on {device_type} tensors needs TRITON_INTERPRET=1 (the Triton "
                              "interpreter); on a GPU the kernels run natively")
        return True
    return device_type == "cuda" and triton_available()


def exporting() -> bool:
    """True while torch.export / ONNX / TorchScript / FX trace the model: exports trace the reference."""
    import torch
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing

    return bool(torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
                or torch.jit.is_scripting() or is_fx_symbolic_tracing())


def enabled(x) -> bool:
    """Whether a model-level fused path runs for tensor ``x``: Triton for its device and not exporting."""
    return not exporting() and use_triton(x.device.type)


_KERNEL_MODULES: dict[str, tuple[bool, object]] = {}


def kernel_module(name: str):
    """Import the module of ``@triton.jit`` kernels ``name`` for the current ``TRITON_INTERPRET``.

    ``triton.jit`` picks compiler or interpreter when the decorator runs, so a module imported in
    one mode is re-imported (``importlib.reload``) when the mode changes; launchers look their
    kernels up through this on every launch.
    """
    import importlib
    import sys

    state = interpreting()
    hit = _KERNEL_MODULES.get(name)
    if hit is not None and hit[0] == state:
        return hit[1]
    fresh = hit is None and name not in sys.modules
    module = importlib.import_module(name)
    if not fresh:
        module = importlib.reload(module)
    _KERNEL_MODULES[name] = (state, module)
    return module
