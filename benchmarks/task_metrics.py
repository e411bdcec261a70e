"""Task fidelity of a model's main output against the float model's, for the benchmarks' tables: the
measure a user of each task reads, as the SDK's quantization report computes it
(:mod:`sapiens2_edge.quantization.fidelity`), next to the rel L2 every task gets."""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: each task's measure, as the tables name it (pointmap: the rel L2 alone)
METRIC = {"seg": "seg agreement", "pose": "keypoint displacement (input px)", "normal": "mean angle (deg)",
          "albedo": "PSNR (dB)", "pointmap": None}


def task_metric(task: str, ref: np.ndarray, got: np.ndarray, input_size: Sequence[int]) -> float | None:
    """The task's measure of ``got`` (B, C, H, W) against ``ref`` for inputs of ``input_size`` (H, W);
    None where the task has none."""
    from sapiens2_edge.quantization import fidelity as f

    if task == "seg":  # share of pixels with the same label
        return f.seg_fidelity(ref, got)["seg_agreement"]
    if task == "pose":  # mean distance between the confident keypoints' decoded positions
        return f.pose_fidelity(ref, got, input_size)["pose_mean_px"]
    if task == "normal":
        return f.normal_fidelity(ref, got)["normal_mean_deg"]
    if task == "albedo":
        return f.albedo_fidelity(ref, got)["albedo_psnr_db"]
    return None


def formatted(task: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f} %" if task == "seg" else f"{value:.3f}"
