"""Task-aware fidelity of a compressed model against its float reference.

Everything compares raw head outputs for the same preprocessed batch (numpy, no torch), so the
numbers mean the same for a torch, ONNX or native run. Per task:

- seg: pixel agreement of the argmax labels and mIoU against the float labels;
- pose: keypoint displacement in network-input pixels after UDP-DARK decoding (mean, p95, max),
  over keypoints the float model is confident about (score >= ``kpt_thr``), and PCK at 1 and 2 px;
- normal: mean / p95 angular error in degrees of the unit normals;
- pointmap: relative L1 of the metric points (pointmap / scale) and relative error of the scale;
- albedo: PSNR (peak 1) of the clamped albedo;
plus, for every task, SQNR (dB), cosine similarity and relative L2 of the raw outputs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..tasks.heatmaps import decode_heatmaps

Outputs = Sequence[np.ndarray]


#: elements per float64 chunk in :func:`output_error` (8 MB): no float64 copy of whole outputs
CHUNK = 1 << 20


def output_error(ref: Outputs, test: Outputs) -> dict[str, float]:
    """SQNR (dB), cosine similarity and relative L2 over all raw outputs together (float64 sums,
    taken chunk by chunk)."""
    rr = tt = rt = noise = 0.0
    for a, b in zip(ref, test, strict=True):
        a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
        for i in range(0, a.size, CHUNK):
            r, t = a[i:i + CHUNK].astype(np.float64), b[i:i + CHUNK].astype(np.float64)
            d = r - t
            rr, tt, rt, noise = rr + float(r @ r), tt + float(t @ t), rt + float(r @ t), noise + float(d @ d)
    denom = float(np.sqrt(rr) * np.sqrt(tt))
    return {
        "sqnr_db": float("inf") if noise == 0 else 10.0 * np.log10(rr / noise),
        "cosine": 1.0 if denom == 0 else rt / denom,
        "rel_l2": 0.0 if rr == 0 else float(np.sqrt(noise / rr)),
    }


def seg_fidelity(ref_logits: np.ndarray, test_logits: np.ndarray) -> dict[str, float]:
    a, b = ref_logits.argmax(1), test_logits.argmax(1)
    ious = []
    for c in np.union1d(np.unique(a), np.unique(b)):
        inter = np.sum((a == c) & (b == c))
        union = np.sum((a == c) | (b == c))
        ious.append(inter / union)
    return {"seg_agreement": float(np.mean(a == b)), "seg_miou": float(np.mean(ious))}


def pose_fidelity(ref_heatmaps: np.ndarray, test_heatmaps: np.ndarray, input_size: Sequence[int],
                  kpt_thr: float = 0.3, keypoints: Sequence[int] | None = None) -> dict[str, float]:
    """``input_size`` is the network input (H, W); displacements are in its pixels. ``keypoints``
    restricts the comparison to a subset of channels (e.g. those a model was trained on)."""
    h, w = input_size
    if keypoints is not None:
        ref_heatmaps, test_heatmaps = ref_heatmaps[:, list(keypoints)], test_heatmaps[:, list(keypoints)]
    dists, confident = [], []
    for r, t in zip(ref_heatmaps, test_heatmaps, strict=True):
        kr, sr = decode_heatmaps(r, (h, w))
        kt, _ = decode_heatmaps(t, (h, w))
        dists.append(np.linalg.norm(kr.astype(np.float64) - kt, axis=1))
        confident.append(sr >= kpt_thr)
    d, m = np.concatenate(dists), np.concatenate(confident)
    if not m.any():  # e.g. a random-weight model: no confident keypoint, use them all
        m = np.ones_like(m)
    d = d[m]
    return {"pose_mean_px": float(d.mean()), "pose_p95_px": float(np.percentile(d, 95)), "pose_max_px": float(d.max()),
            "pose_pck_1px": float(np.mean(d <= 1.0)), "pose_pck_2px": float(np.mean(d <= 2.0)),
            "pose_keypoints": int(m.sum())}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)


def normal_fidelity(ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
    cos = np.clip(np.sum(_unit(ref.astype(np.float64)) * _unit(test.astype(np.float64)), axis=1), -1.0, 1.0)
    ang = np.degrees(np.arccos(cos))
    return {"normal_mean_deg": float(ang.mean()), "normal_p95_deg": float(np.percentile(ang, 95))}


def pointmap_fidelity(ref: Outputs, test: Outputs) -> dict[str, float]:
    (pr, sr), (pt, st) = ref, test
    sr, st = np.asarray(sr, np.float64).reshape(-1), np.asarray(st, np.float64).reshape(-1)
    mr = pr / sr[:, None, None, None]
    mt = pt / st[:, None, None, None]
    return {"pointmap_rel_l1": float(np.abs(mr - mt).mean() / max(np.abs(mr).mean(), 1e-12)),
            "scale_rel_err": float(np.mean(np.abs(st - sr) / np.maximum(np.abs(sr), 1e-12)))}


def albedo_fidelity(ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
    mse = float(np.mean((np.clip(ref, 0, 1).astype(np.float64) - np.clip(test, 0, 1)) ** 2))
    return {"albedo_psnr_db": float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)}


def task_fidelity(task: str | None, ref: Outputs, test: Outputs, input_size: Sequence[int],
                  keypoints: Sequence[int] | None = None) -> dict[str, float]:
    """All metrics for ``task`` (None: a backbone featmap, raw-output metrics only); ``keypoints``
    restricts the pose metrics to those channels."""
    ref, test = tuple(ref), tuple(test)
    out = output_error(ref, test)
    if task == "seg":
        out.update(seg_fidelity(ref[0], test[0]))
    elif task == "pose":
        out.update(pose_fidelity(ref[0], test[0], input_size, keypoints=keypoints))
    elif task == "normal":
        out.update(normal_fidelity(ref[0], test[0]))
    elif task == "pointmap":
        out.update(pointmap_fidelity(ref, test))
    elif task == "albedo":
        out.update(albedo_fidelity(ref[0], test[0]))
    return out
