"""Observers: statistics of layer inputs collected with forward hooks during calibration.

* :class:`RangeObserver` - the per-tensor range of a static activation scale. It keeps the
  exact running |x| maximum and a histogram of |x| (2048 bins, doubling its range when a larger
  value arrives, as PyTorch's HistogramObserver does), from which three estimators read:
  ``minmax`` (the exact maximum), ``percentile`` (of |x|, interpolated inside a bin) and
  ``mse`` (the clipping value minimising the expected squared quantization error: clipping
  error above it, rounding noise ``step**2 / 12`` below it).
* :class:`ChannelAbsMaxObserver` - per-input-channel |x| maxima, for SmoothQuant.

Both leave out the first ``prefix_tokens`` tokens of each (B, T, C) sequence (CLS + storage
tokens carry outlier activations and get per-token scales at run time).

The histogram is ``torch.histc``'s, bin for bin, computed on every thread (:mod:`.histogram`).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..kernels.numerics import FP8_MAX, INT8_MAX
from .histogram import bf16_magnitudes, histc_counts

NUM_BINS = 2048


def _body(x: torch.Tensor, prefix_tokens: int) -> torch.Tensor:
    """The patch-token rows of x as (M, C), in x's dtype (a view where the layout allows)."""
    if x.ndim == 3 and prefix_tokens > 0:
        x = x[:, prefix_tokens:]
    return x.detach().reshape(-1, x.shape[-1])


def _abs_float(rows: torch.Tensor) -> torch.Tensor:
    """|rows| as float32 in one new tensor (a bf16 input is widened, then made absolute in place)."""
    return rows.abs() if rows.dtype == torch.float32 else rows.float().abs_()


def finite_absmax(x: torch.Tensor) -> float:
    """The largest |x| of an observed activation; a calibration error when it is NaN or inf."""
    m = float(x.detach().abs().amax())
    if not m < float("inf"):  # NaN or inf
        raise non_finite_activations()
    return m


def non_finite_activations():
    """The error of a calibration forward whose observed activations are NaN or inf."""
    from ..errors import CalibrationError

    return CalibrationError("a calibration forward pass produced NaN or inf activations; expected finite values "
                            "(check the calibration inputs are normalised images)")


class RangeObserver:
    """Running |x| statistics of one layer input; :meth:`range` gives the clipping value.

    ``histogram=False`` keeps the maximum only (enough for ``minmax``; no per-element binning).
    """

    def __init__(self, prefix_tokens: int = 0, bins: int = NUM_BINS, histogram: bool = True):
        self.prefix_tokens = prefix_tokens
        self.bins = bins
        self.histogram = histogram
        self.amax = 0.0
        self.hist_max = 0.0
        self.hist = torch.zeros(bins, dtype=torch.float64)
        self.count = 0

    def observe(self, x: torch.Tensor) -> None:
        rows = _body(x, self.prefix_tokens)
        n = rows.numel()
        if n == 0:
            return
        if not self.histogram:
            m = float(rows.abs().amax())  # exact in any float dtype
        elif rows.dtype == torch.bfloat16:
            values, counts = bf16_magnitudes(rows)
            m = float(values[-1])
        else:
            values, counts = _abs_float(rows).flatten(), None
            m = float(values.max())
        if not math.isfinite(m):
            raise non_finite_activations()
        self.amax = max(self.amax, m)
        self.count += n
        if not self.histogram:
            return
        if m == 0.0:
            self.hist[0] += n
            return
        if self.hist_max == 0.0:
            self.hist_max = m
        while m > self.hist_max:  # double the range: merge bin pairs
            self.hist = torch.cat([self.hist.view(-1, 2).sum(1), torch.zeros(self.bins // 2, dtype=torch.float64)])
            self.hist_max *= 2.0
        self.hist += histc_counts(values, counts, self.bins, self.hist_max)

    # -- estimators --------------------------------------------------------------------------------
    def _edges(self) -> torch.Tensor:
        return torch.linspace(0.0, self.hist_max, self.bins + 1, dtype=torch.float64)

    def percentile(self, q: float) -> float:
        if self.count == 0 or self.amax == 0.0:
            return self.amax
        if q >= 100.0:
            return self.amax
        cdf = torch.cumsum(self.hist, 0)
        target = cdf[-1] * q / 100.0
        i = int(torch.searchsorted(cdf, target))
        i = min(i, self.bins - 1)
        lo_c = float(cdf[i - 1]) if i > 0 else 0.0
        frac = (float(target) - lo_c) / max(float(self.hist[i]), 1e-30)
        width = self.hist_max / self.bins
        return min(self.amax, (i + min(max(frac, 0.0), 1.0)) * width)

    def mse(self, dtype: str = "int8", candidates: int = 200) -> float:
        if self.count == 0 or self.amax == 0.0:
            return self.amax
        edges = self._edges()
        centers = ((edges[:-1] + edges[1:]) / 2)[None, :]
        clips = self.amax * torch.arange(1, candidates + 1, dtype=torch.float64)[:, None] / candidates
        err = (self.hist[None, :] * _expected_sq_error(centers, clips, dtype)).sum(dim=1)
        return float(clips[int(torch.argmin(err)), 0])

    def range(self, estimator: str, percentile: float = 99.99, dtype: str = "int8") -> float:
        if estimator == "minmax":
            return self.amax
        if not self.histogram:
            raise ValueError(f"the {estimator} estimator needs the histogram; this observer kept the maximum only")
        if estimator == "percentile":
            return self.percentile(percentile)
        return self.mse(dtype)


def _expected_sq_error(v: torch.Tensor, clip: torch.Tensor, dtype: str) -> torch.Tensor:
    """Expected squared error of quantizing |x| = v with clipping value(s) ``clip`` (broadcast)."""
    if dtype == "int8":
        step = (clip / INT8_MAX).expand(torch.broadcast_shapes(v.shape, clip.shape))
    else:  # E4M3: 3 mantissa bits, step 2**(e-3) at magnitude 2**e, subnormal step below 2**-6
        scale = clip / FP8_MAX
        y = torch.minimum(v / scale, torch.full_like(v / scale, FP8_MAX)).clamp_min(2.0**-6)
        step = torch.pow(2.0, torch.floor(torch.log2(y)) - 3) * scale
    rounding = step * step / 12.0
    clipping = (v - clip).clamp_min(0.0) ** 2
    return torch.where(v > clip, clipping, rounding)


class ChannelAbsMaxObserver:
    """Per-channel max |x| over the patch tokens of every observed input."""

    def __init__(self, prefix_tokens: int = 0):
        self.prefix_tokens = prefix_tokens
        self.amax: torch.Tensor | None = None

    def observe(self, x: torch.Tensor) -> None:
        a = _body(x, self.prefix_tokens)
        if a.numel() == 0:
            return
        m = a.abs().amax(dim=0).float()  # a maximum is one of the values: exact in the input's dtype
        self.amax = m if self.amax is None else torch.maximum(self.amax, m)


def attach_input_observers(model: nn.Module, observers: dict[str, object]) -> Callable[[], None]:
    """Hook ``observer.observe(input)`` on each named module; returns a function removing the hooks."""
    modules = dict(model.named_modules())
    handles = []
    for name, obs in observers.items():
        def hook(_mod, args, _obs=obs):
            _obs.observe(args[0])
        handles.append(modules[name].register_forward_pre_hook(hook))

    def remove() -> None:
        for h in handles:
            h.remove()
    return remove


__all__ = ["non_finite_activations", "finite_absmax", "RangeObserver", "ChannelAbsMaxObserver", "attach_input_observers", "NUM_BINS"]
