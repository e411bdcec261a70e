"""The precision an exported artifact has: one rule for every export format.

A quantized model exports as its scheme (``int8-weight``, ``int8``, ``fp8``, ``fp16``,
``mixed``): the artifact runs the recipe. A float model exports in one of the float precisions
its format offers (:data:`FLOAT_PRECISIONS`, the first is the default). Anything else is a
:class:`~sapiens2_edge.errors.ConfigError` that says what to do instead. The exporters consult
this table; whether a format can run each quantized layer is theirs to check (from the layer's
:mod:`.decomposed` form).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .config import SCHEMES

#: format -> float precisions a float model may export as (first = default)
FLOAT_PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32", "fp16"),
    "openvino": ("fp32", "fp16", "bf16"),  # bf16: computed in bf16 where the CPU has it natively
    "coreml": ("fp16", "fp32"),  # FLOAT16 compute, the Neural Engine's, unless fp32 is asked for
    "torch": ("fp32", "bf16"),  # fp32 keeps the model's own numerics; bf16: the program under bf16 autocast
    "native": ("fp32", "fp16", "bf16"),  # bf16: bf16 weights, bf16 GEMMs where oneDNN runs them natively
}
#: why a format lacks a float precision the others have
_MISSING = {("torch", "fp16"): "the program keeps the model's own precision: export the float model as 'fp32', or "
                               "quantize it first (scheme 'fp16')"}


def scheme_of(model: Any) -> str | None:
    """The quantization scheme of a QuantizedModel; None for a float model."""
    return getattr(getattr(model, "recipe", None), "scheme", None)


def export_precision(model: Any, fmt: str, precision: str | None = None) -> str:
    """The precision an artifact of ``model`` in format ``fmt`` has (``precision`` None = default)."""
    floats = FLOAT_PRECISIONS.get(fmt, ("fp32", "fp16"))
    scheme = scheme_of(model)
    if scheme is not None:
        if precision not in (None, scheme):
            raise ConfigError(f"this model is quantized with scheme {scheme!r}, so it exports as precision {scheme!r}; "
                              f"got precision={precision!r} (leave precision unset, or quantize the float model with "
                              f"the scheme you want)")
        return scheme
    if precision is None or precision in floats:
        return precision or floats[0]
    if (fmt, precision) in _MISSING:
        raise ConfigError(f"{fmt} export precision {precision!r} is not supported; {_MISSING[fmt, precision]}")
    if precision in SCHEMES:
        raise ConfigError(f"precision {precision!r} needs a quantized model: quantize first "
                          f"(s2e.quantize(model, {precision!r}, calibration=...), or the CLI's --scheme "
                          f"{precision} --calib DIR); a float model exports as {' or '.join(map(repr, floats))}")
    raise ConfigError(f"unknown precision {precision!r}; expected {' or '.join(map(repr, floats))} for a float model")


__all__ = ["FLOAT_PRECISIONS", "scheme_of", "export_precision"]
