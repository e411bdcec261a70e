"""The one switch that decides where the kernels run: Triton or the pure-torch reference.

``SAPIENS2_EDGE_KERNELS`` forces the choice for every kernel:
  ``auto`` (default)  Triton on CUDA tensors when Triton is installed, the reference elsewhere;
  ``triton``          always Triton (on CPU tensors this needs ``TRITON_INTERPRET=1``);
  ``reference``       always the pure-torch reference.
``TRITON_INTERPRET=1`` runs the kernels through Triton's interpreter. Both variables and whether
Triton is installed are read once, on first use (Triton itself reads ``TRITON_INTERPRET`` when it
builds a kernel, so the interpreter is a fact of the process). :func:`override` changes the
settings for a scope (tests, benchmarks).

Modules choose their fused path once, at construction (:func:`fused_default`, like timm's
``use_fused_attn()``), and keep it in an attribute that can be set per module; at call time only
the tensor's device and an export in progress are checked (:func:`enabled`): exports always trace
the reference, so no kernel op reaches an exported graph.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
from collections.abc import Iterator

from ..errors import ConfigError

ENV = "SAPIENS2_EDGE_KERNELS"
MODES = ("auto", "triton", "reference")


@dataclasses.dataclass(frozen=True)
class Settings:
    mode: str  # one of MODES
    triton: bool  # Triton is installed
    interpret: bool  # TRITON_INTERPRET=1


_current: Settings | None = None


def _check_mode(value: str) -> str:
    if value not in MODES:
        raise ConfigError(f"{ENV}={value!r} is not a kernel mode; expected one of {', '.join(MODES)}")
    return value


def _from_environment() -> Settings:
    return Settings(mode=_check_mode(os.environ.get(ENV, "auto").strip().lower() or "auto"),
                    triton=importlib.util.find_spec("triton") is not None,
                    interpret=os.environ.get("TRITON_INTERPRET", "") == "1")


def settings() -> Settings:
    """The process's kernel settings (the environment is read on the first call only)."""
    global _current
    if _current is None:
        _current = _from_environment()
    return _current


@contextlib.contextmanager
def override(**changes) -> Iterator[Settings]:
    """``with override(mode="reference"): ...``: other settings for the scope. Changing
    ``interpret`` changes the policy only; Triton still builds kernels the way the process began."""
    global _current
    saved = settings()
    if "mode" in changes:
        _check_mode(changes["mode"])
    _current = dataclasses.replace(saved, **changes)
    try:
        yield _current
    finally:
        _current = saved


def mode() -> str:
    return settings().mode


def interpreting() -> bool:
    return settings().interpret


def fused_default() -> bool:
    """Whether a module built now takes its fused kernel path when the device allows: not in
    ``reference`` mode, and Triton is installed (``triton`` mode without it fails at the call)."""
    s = settings()
    return s.mode == "triton" or (s.mode == "auto" and s.triton)


def use_triton(device_type: str) -> bool:
    """Whether a kernel called on tensors of ``device_type`` runs its Triton implementation."""
    s = settings()
    if s.mode == "reference":
        return False
    if s.mode == "triton":
        if not s.triton:
            raise ConfigError(f"{ENV}=triton but Triton is not installed: pip install 'sapiens2-edge[triton]'")
        if device_type != "cuda" and not s.interpret:
            raise ConfigError(f"{ENV}=triton on {device_type} tensors needs TRITON_INTERPRET=1 (the Triton "
                              "interpreter); on a GPU the kernels run natively")
        return True
    return device_type == "cuda" and s.triton


def exporting() -> bool:
    """True while torch.export / ONNX / TorchScript / FX trace the model: exports trace the reference."""
    import torch
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing

    return bool(torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
                or torch.jit.is_scripting() or is_fx_symbolic_tracing())


def enabled(x) -> bool:
    """Whether a fused path runs for tensor ``x`` now: Triton for its device and not exporting."""
    return not exporting() and use_triton(x.device.type)


__all__ = ["ENV", "MODES", "Settings", "settings", "override", "mode", "interpreting", "fused_default", "use_triton",
           "exporting", "enabled"]
