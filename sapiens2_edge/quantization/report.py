"""``QuantReport``: what a quantization did and what it cost, layer by layer.

SQNR values are in dB (``10 log10(signal energy / error energy)``); ``None`` in JSON means
"not measured" for output SQNR (no calibration data) and "exact" (no error) for weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


@dataclass
class LayerReport:
    name: str
    scheme: str
    weight_sqnr_db: float
    output_sqnr_db: float | None = None  # on calibration inputs, float input -> float vs quantized layer
    smoothed: bool = False
    input_range: float | None = None  # calibrated static range (clipping value), if any


@dataclass
class QuantReport:
    """Per-layer and whole-model numbers of one ``quantize`` call.

    ``fidelity`` is free for task-aware metrics (filled by the sensitivity / fidelity code).
    ``output_sqnr_db``: end-to-end SQNR of the model output vs the float model on the first
    ``report_samples`` calibration inputs (None without calibration).
    """

    scheme: str
    recipe: dict
    layers: list[LayerReport] = field(default_factory=list)
    size_before_bytes: int = 0
    size_after_bytes: int = 0
    output_sqnr_db: float | None = None
    calibration: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fidelity: dict = field(default_factory=dict)

    @property
    def compression(self) -> float:
        return self.size_before_bytes / self.size_after_bytes if self.size_after_bytes else math.nan

    def layer(self, name: str) -> LayerReport:
        for lr in self.layers:
            if lr.name == name:
                return lr
        raise KeyError(name)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["compression"] = self.compression
        return _finite(d)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def summary(self) -> str:
        """A short human-readable table."""
        lines = [f"scheme {self.scheme}: {self.size_before_bytes / 1e6:.2f} MB -> {self.size_after_bytes / 1e6:.2f} MB "
                 f"({self.compression:.2f}x)"]
        if self.output_sqnr_db is not None:
            lines.append(f"model output SQNR {self.output_sqnr_db:.1f} dB")
        lines.append(f"{'layer':48s} {'scheme':12s} {'w SQNR':>8s} {'out SQNR':>9s}")
        for lr in self.layers:
            out = "-" if lr.output_sqnr_db is None else f"{lr.output_sqnr_db:8.1f}"
            lines.append(f"{lr.name:48s} {lr.scheme:12s} {lr.weight_sqnr_db:8.1f} {out:>9s}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


__all__ = ["QuantReport", "LayerReport"]
