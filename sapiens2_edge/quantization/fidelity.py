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


class _ErrorSums:
    """float64 sums of r.r, t.t, r.t and (r-t).(r-t), added chunk by chunk."""

    def __init__(self) -> None:
        self.rr = self.tt = self.rt = self.noise = 0.0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
        for i in range(0, a.size, CHUNK):
            r, t = a[i:i + CHUNK].astype(np.float64), b[i:i + CHUNK].astype(np.float64)
            d = r - t
            self.rr, self.tt = self.rr + float(r @ r), self.tt + float(t @ t)
            self.rt, self.noise = self.rt + float(r @ t), self.noise + float(d @ d)

    def merge(self, other: "_ErrorSums") -> None:
        self.rr, self.tt, self.rt, self.noise = (self.rr + other.rr, self.tt + other.tt, self.rt + other.rt,
                                                 self.noise + other.noise)

    def result(self) -> dict[str, float]:
        denom = float(np.sqrt(self.rr) * np.sqrt(self.tt))
        return {
            "sqnr_db": float("inf") if self.noise == 0 else 10.0 * np.log10(self.rr / self.noise),
            "cosine": 1.0 if denom == 0 else self.rt / denom,
            "rel_l2": 0.0 if self.rr == 0 else float(np.sqrt(self.noise / self.rr)),
        }


def output_error(ref: Outputs, test: Outputs) -> dict[str, float]:
    """SQNR (dB), cosine similarity and relative L2 over all raw outputs together (float64 sums,
    taken chunk by chunk)."""
    sums = _ErrorSums()
    for a, b in zip(ref, test, strict=True):
        sums.add(a, b)
    return sums.result()


def _seg_labels_fidelity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    ious = []
    for c in np.union1d(np.unique(a), np.unique(b)):
        inter = np.sum((a == c) & (b == c))
        union = np.sum((a == c) | (b == c))
        ious.append(inter / union)
    return {"seg_agreement": float(np.mean(a == b)), "seg_miou": float(np.mean(ious))}


def seg_fidelity(ref_logits: np.ndarray, test_logits: np.ndarray) -> dict[str, float]:
    return _seg_labels_fidelity(ref_logits.argmax(1), test_logits.argmax(1))


def _pose_distances(ref_heatmaps: np.ndarray, test_heatmaps: np.ndarray, input_size: Sequence[int], kpt_thr: float,
                    keypoints: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """(displacement, float-model confidence >= kpt_thr) per decoded keypoint of each image."""
    h, w = input_size
    if keypoints is not None:
        ref_heatmaps, test_heatmaps = ref_heatmaps[:, list(keypoints)], test_heatmaps[:, list(keypoints)]
    dists, confident = [], []
    for r, t in zip(ref_heatmaps, test_heatmaps, strict=True):
        kr, sr = decode_heatmaps(r, (h, w))
        kt, _ = decode_heatmaps(t, (h, w))
        dists.append(np.linalg.norm(kr.astype(np.float64) - kt, axis=1))
        confident.append(sr >= kpt_thr)
    return np.concatenate(dists), np.concatenate(confident)


def _pose_summary(d: np.ndarray, m: np.ndarray) -> dict[str, float]:
    if not m.any():  # e.g. a random-weight model: no confident keypoint, use them all
        m = np.ones_like(m)
    d = d[m]
    return {"pose_mean_px": float(d.mean()), "pose_p95_px": float(np.percentile(d, 95)), "pose_max_px": float(d.max()),
            "pose_pck_1px": float(np.mean(d <= 1.0)), "pose_pck_2px": float(np.mean(d <= 2.0)),
            "pose_keypoints": int(m.sum())}


def pose_fidelity(ref_heatmaps: np.ndarray, test_heatmaps: np.ndarray, input_size: Sequence[int],
                  kpt_thr: float = 0.3, keypoints: Sequence[int] | None = None) -> dict[str, float]:
    """``input_size`` is the network input (H, W); displacements are in its pixels. ``keypoints``
    restricts the comparison to a subset of channels (e.g. those a model was trained on)."""
    return _pose_summary(*_pose_distances(ref_heatmaps, test_heatmaps, input_size, kpt_thr, keypoints))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)


def _normal_angles(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    cos = np.clip(np.sum(_unit(ref.astype(np.float64)) * _unit(test.astype(np.float64)), axis=1), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def _normal_summary(ang: np.ndarray) -> dict[str, float]:
    return {"normal_mean_deg": float(ang.mean()), "normal_p95_deg": float(np.percentile(ang, 95))}


def normal_fidelity(ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
    return _normal_summary(_normal_angles(ref, test))


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


class FidelityAccumulator:
    """:func:`task_fidelity` over batches without keeping the raw outputs: each batch is reduced to
    what the metrics read (the error sums; seg labels, pose displacements, normal angles), so a
    report over 16 full-resolution seg outputs holds labels, not 2 x 1.5 GB of logits. Pointmap
    and albedo outputs (3 channels) are kept as they are."""

    def __init__(self, task: str | None, input_size: Sequence[int], keypoints: Sequence[int] | None = None,
                 kpt_thr: float = 0.3) -> None:
        self.task, self.input_size, self.keypoints, self.kpt_thr = task, tuple(input_size), keypoints, kpt_thr
        self.sums = _ErrorSums()
        self.parts: list[tuple] = []
        #: per image, the terms of the headline metric's ratio (see :mod:`.enough`): (sum, count)
        #: pairs; pose: (displacement sum, keypoints) over confident keypoints, then over all
        self.per_image: list[tuple[float, ...]] = []

    @property
    def images(self) -> int:
        return len(self.per_image)

    def add(self, ref: Outputs, test: Outputs) -> None:
        ref, test = tuple(ref), tuple(test)
        if len(ref) != len(test):
            raise ValueError(f"{len(ref)} reference outputs against {len(test)} tested ones")
        n = len(ref[0])
        images = [_ErrorSums() for _ in range(n)]  # per image: the featmap's headline, and the whole set's sums
        for a, b in zip(ref, test, strict=True):
            for i, image in enumerate(images):
                image.add(a[i], b[i])
        for image in images:
            self.sums.merge(image)
        if self.task == "seg":
            labels = np.uint8 if ref[0].shape[1] <= 256 else np.int32
            self.parts.append((ref[0].argmax(1).astype(labels), test[0].argmax(1).astype(labels)))
            agree = (self.parts[-1][0] == self.parts[-1][1]).reshape(n, -1)
            self.per_image += [(float(row.sum()), float(row.size)) for row in agree]
        elif self.task == "pose":
            self.parts.append(_pose_distances(ref[0], test[0], self.input_size, self.kpt_thr, self.keypoints))
            d, m = (x.reshape(n, -1) for x in self.parts[-1])
            self.per_image += [(float(di[mi].sum()), float(mi.sum()), float(di.sum()), float(di.size))
                               for di, mi in zip(d, m, strict=True)]
        elif self.task == "normal":
            self.parts.append((_normal_angles(ref[0], test[0]),))
            self.per_image += [(float(a.sum()), float(a.size)) for a in self.parts[-1][0]]
        elif self.task in ("pointmap", "albedo"):
            self.parts.append((ref, test))
        if self.task is None:
            self.per_image += [(image.noise, image.rr) for image in images]
        self.per_image += self._ratio_terms(ref, test, n)

    def _ratio_terms(self, ref: Outputs, test: Outputs, n: int) -> list[tuple[float, float]]:
        """Per image (numerator, denominator) of the headline metrics computed from the raw outputs:
        pointmap |metric points error| over |metric points|, albedo squared error over pixels."""
        if self.task == "pointmap":
            (pr, sr), (pt, st) = ref, test
            mr = pr / np.asarray(sr, np.float64).reshape(n, 1, 1, 1)
            mt = pt / np.asarray(st, np.float64).reshape(n, 1, 1, 1)
            return [(float(np.abs(a - b).sum()), float(np.abs(a).sum())) for a, b in zip(mr, mt, strict=True)]
        if self.task == "albedo":
            return [(float(np.sum((np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1)) ** 2)), float(a.size))
                    for a, b in zip(ref[0], test[0], strict=True)]
        return []

    def interval(self) -> dict:
        """The task's headline metric over the images so far with its 95 % interval
        (:func:`.enough.headline_interval`)."""
        from .enough import headline_interval

        terms = np.asarray(self.per_image, np.float64).reshape(len(self.per_image), -1)
        if self.task == "pose" and not terms[:, 1].any():  # no confident keypoint: all of them, as the summary
            terms = terms[:, 2:]
        return headline_interval(self.task, terms[:, 0], terms[:, 1])

    def result(self) -> dict[str, float]:
        out = self.sums.result()
        if not self.parts:
            return out
        if self.task == "seg":
            out.update(_seg_labels_fidelity(*(np.concatenate(p) for p in zip(*self.parts, strict=True))))
        elif self.task == "pose":
            out.update(_pose_summary(*(np.concatenate(p) for p in zip(*self.parts, strict=True))))
        elif self.task == "normal":
            out.update(_normal_summary(np.concatenate([p[0] for p in self.parts])))
        else:
            ref, test = (tuple(np.concatenate(o) for o in zip(*side, strict=True))
                         for side in zip(*self.parts, strict=True))
            out.update(pointmap_fidelity(ref, test) if self.task == "pointmap" else albedo_fidelity(ref[0], test[0]))
        return out


def task_fidelity(task: str | None, ref: Outputs, test: Outputs, input_size: Sequence[int],
                  keypoints: Sequence[int] | None = None) -> dict[str, float]:
    """All metrics for ``task`` (None: a backbone featmap, raw-output metrics only); ``keypoints``
    restricts the pose metrics to those channels."""
    acc = FidelityAccumulator(task, input_size, keypoints)
    acc.add(ref, test)
    return acc.result()
