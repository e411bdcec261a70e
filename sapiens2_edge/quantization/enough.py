"""When a held-out evaluation has seen enough images.

A fidelity report's numbers are means over images; past a few images, another image moves them
less than the report's reader can act on (pose aside: :data:`READ_ALL`), while each one costs a
float and a compressed forward (at 0.4b and 1024x768, ~35 s on two cores). With a minimum number of
images, the evaluation stops
once the 95 % confidence interval of the task's headline metric is tighter than
:data:`HEADLINE`'s half-width, and the report says how many images it read, how many it had,
and the interval.

The interval is that of a ratio estimator: the headline metrics are ratios of per-image sums
(pixels that agree over pixels, displacement over confident keypoints, noise over signal energy),
so the pooled value is ``R = sum(s) / sum(c)`` and its variance over ``m`` images is
``sum((s_i - R c_i)^2) / (m (m - 1) mean(c)^2)`` (the delta method), scaled by Student's t with
``m - 1`` degrees of freedom. Metrics in decibels (PSNR, SQNR) take the interval of the ratio
through the logarithm's derivative.

Images are read in a shuffled order, the same every run (:func:`reading_order`): a folder of video
frames sorted by name would otherwise give a first few near-identical images whose agreement says
little about the rest. Not a bit-reversed stride: that reads every even index first, and a folder of
interleaved stereo pairs (``0001_left``, ``0001_right``, ...) would give it one camera only.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: task -> (headline metric, absolute 95 % half-width, half-width relative to the value): the
#: evaluation stops once the interval is within the larger of the two (pose's interval is reported,
#: its half-widths never end the reading: :data:`READ_ALL`)
HEADLINE: dict[str | None, tuple[str, float, float]] = {
    "seg": ("seg_agreement", 0.005, 0.0),
    "pose": ("pose_mean_px", 0.05, 0.1),
    "normal": ("normal_mean_deg", 0.1, 0.1),
    "pointmap": ("pointmap_rel_l1", 0.0, 0.1),
    "albedo": ("albedo_psnr_db", 0.5, 0.0),
    None: ("sqnr_db", 0.5, 0.0),
}
#: the headline metrics given in decibels of the ratio: -10 log10(R)
DECIBEL_METRICS = ("albedo_psnr_db", "sqnr_db")
#: tasks whose held-out images are all read whatever the minimum: a pose image's mean displacement rests
#: on a few hundred keypoints, and one heatmap whose peak flips moves it by pixels. On the trained pose
#: test fixture (int8), the first 4 images gave 0.022 +/- 0.013 px where all 16 give 0.149 px (one image
#: holds a flip): no interval sees an image that was not read.
READ_ALL = ("pose",)
READ_ALL_WHY = ("every image was read (pose: one keypoint whose heatmap peak flips moves an image's mean by "
                "pixels, which an interval over fewer images cannot see)")

#: Student's t, 97.5 % quantile, for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """Student's t 97.5 % quantile (two-sided 95 %); beyond 30 degrees of freedom 1.96 + 2.37 / df
    (within 0.003 of the exact value)."""
    if df < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.37 / df


def ratio_interval(sums: Sequence[float], counts: Sequence[float]) -> tuple[float, float]:
    """(pooled ratio ``sum(sums) / sum(counts)``, 95 % half-width) over per-image terms; the
    half-width is infinite with fewer than two images."""
    s, c = np.asarray(sums, np.float64), np.asarray(counts, np.float64)
    total = float(c.sum())
    ratio = float(s.sum()) / total if total else 0.0
    m = s.size
    if m < 2:
        return ratio, math.inf
    mean_count = total / m
    if mean_count == 0:
        return ratio, 0.0
    var = float(np.sum((s - ratio * c) ** 2)) / (m * (m - 1) * mean_count ** 2)
    return ratio, t975(m - 1) * math.sqrt(var)


def headline_interval(task: str | None, sums: Sequence[float], counts: Sequence[float]) -> dict:
    """The task's headline metric over the images so far with its 95 % interval and the half-width
    at which the evaluation stops."""
    metric, absolute, relative = HEADLINE[task]
    ratio, half = ratio_interval(sums, counts)
    if metric in DECIBEL_METRICS:
        value = math.inf if ratio == 0 else -10.0 * math.log10(ratio)
        half = 0.0 if ratio == 0 else 10.0 / math.log(10.0) * half / ratio
    else:
        value = ratio
    target = max(absolute, relative * abs(value)) if math.isfinite(value) else absolute
    return {"metric": metric, "value": value, "half_width_95": half, "target_half_width_95": target,
            "images": len(sums)}


def reading_order(n: int) -> list[int]:
    """0..n-1 shuffled with a fixed seed: the same order every run, every prefix a random sample."""
    return [int(i) for i in np.random.default_rng(0).permutation(n)]


class EnoughImages:
    """The stopping rule of one evaluation: ``min_images`` None (or not below ``available``, or a task
    of :data:`READ_ALL`) reads every image; otherwise at least ``min_images``, then until the headline
    interval is tight."""

    def __init__(self, accumulator, min_images: int | None, available: int) -> None:
        self.accumulator, self.available = accumulator, available
        self.min_images = min_images
        fewer = min_images is not None and min_images < available
        self.read_all_task = fewer and accumulator.task in READ_ALL
        self.early = fewer and not self.read_all_task
        self.read = 0

    def __call__(self, read: int) -> bool:
        """True once ``read`` images are enough."""
        self.read = read
        if not self.early or read < self.min_images:
            return False
        interval = self.accumulator.interval()
        return interval["half_width_95"] <= interval["target_half_width_95"]

    def summary(self) -> dict:
        """What the report records: images read and available, why it stopped, the interval."""
        read = self.read or self.available
        out = {"samples": read, "samples_available": self.available}
        if self.accumulator.images >= 2:
            out["interval"] = self.accumulator.interval()
            if self.accumulator.task in READ_ALL:  # no half-width ends its reading
                del out["interval"]["target_half_width_95"]
        if self.early:
            out["stopped"] = ("the interval was tight enough" if read < self.available
                              else "every image was read (the interval was not tight enough before)")
        elif self.read_all_task:
            out["stopped"] = READ_ALL_WHY
        return out


__all__ = ["HEADLINE", "READ_ALL", "EnoughImages", "headline_interval", "ratio_interval", "reading_order", "t975"]
