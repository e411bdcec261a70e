"""Task fidelity of a model's main output against the float model's, for the benchmarks' tables: the
measure a user of each task reads (seg label agreement, pose keypoint displacement, the angle between
normals, albedo PSNR), next to the rel L2 every task gets."""

from __future__ import annotations

import numpy as np

#: each task's measure, as the tables name it (pointmap: the rel L2 alone)
METRIC = {"seg": "seg agreement", "pose": "keypoint displacement (heatmap px)", "normal": "mean angle (deg)",
          "albedo": "PSNR (dB)", "pointmap": None}


def task_metric(task: str, ref: np.ndarray, got: np.ndarray) -> float | None:
    """The task's measure of ``got`` (B, C, H, W) against ``ref``; None where the task has none."""
    r, g = ref.astype(np.float64), got.astype(np.float64)
    if task == "seg":  # share of pixels with the same label
        return float((r.argmax(1) == g.argmax(1)).mean())
    if task == "pose":  # mean distance between each keypoint's heatmap maxima
        w = r.shape[-1]
        peak = lambda h: np.stack(np.divmod(h.reshape(*h.shape[:2], -1).argmax(-1), w), -1)  # noqa: E731
        return float(np.linalg.norm(peak(r) - peak(g), axis=-1).mean())
    if task == "normal":
        unit = lambda v: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)  # noqa: E731
        cos = np.clip((unit(r) * unit(g)).sum(1), -1.0, 1.0)
        return float(np.degrees(np.arccos(cos)).mean())
    if task == "albedo":
        mse = float(((np.clip(r, 0, 1) - np.clip(g, 0, 1)) ** 2).mean())
        return float(10 * np.log10(1.0 / max(mse, 1e-12)))
    return None


def formatted(task: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f} %" if task == "seg" else f"{value:.3f}"
