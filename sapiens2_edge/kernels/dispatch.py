"""Which implementation a kernel call uses: the Triton kernel or its pure-torch reference.

``SAPIENS2_EDGE_KERNELS`` forces the choice for every kernel:
  ``auto`` (default)  Triton on CUDA tensors when Triton is installed, the reference elsewhere;
  ``triton``          always Triton (on CPU tensors this needs ``TRITON_INTERPRET=1``);
  ``reference``       always the pure-torch reference (what ONNX / Core ML export traces).
"""

from __future__ import annotations

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


def triton_available() -> bool:
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
