"""Tracking people across video frames: greedy IoU matching of boxes to tracks (:class:`IoUTracker`)
and One-Euro smoothing of each track's keypoints (:class:`OneEuro`, :class:`OneEuroFilter`).
numpy only."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), xyxy -> (N, M)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@dataclass
class Track:
    id: int
    box: np.ndarray
    misses: int = 0


@dataclass
class IoUTracker:
    """Greedy IoU matching: the pair (track, box) of highest IoU first, while IoU >= ``iou_thr``;
    a box left over starts a new track (ids 0, 1, 2, ... never reused); a track left over counts a
    miss and is dropped after ``max_misses`` misses in a row."""

    iou_thr: float = 0.3
    max_misses: int = 5
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < float(self.iou_thr) <= 1.0:
            raise ConfigError(f"iou_thr must be in (0, 1], got {self.iou_thr!r}")
        if isinstance(self.max_misses, bool) or not isinstance(self.max_misses, int) or self.max_misses < 0:
            raise ConfigError(f"max_misses must be a non-negative integer, got {self.max_misses!r}")

    def update(self, boxes: np.ndarray) -> np.ndarray:
        """This frame's boxes (N, 4) -> their track ids (N,) int64."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        ids = np.full(len(boxes), -1, np.int64)
        iou = iou_matrix(np.array([t.box for t in self.tracks]).reshape(-1, 4), boxes)
        matched_tracks: set[int] = set()
        while iou.size and iou.max() >= self.iou_thr:
            t, b = np.unravel_index(int(np.argmax(iou)), iou.shape)
            ids[b] = self.tracks[t].id
            self.tracks[t].box, self.tracks[t].misses = boxes[b], 0
            matched_tracks.add(int(t))
            iou[t, :], iou[:, b] = -1.0, -1.0
        kept = []
        for i, track in enumerate(self.tracks):
            if i not in matched_tracks:
                track.misses += 1
            if track.misses <= self.max_misses:
                kept.append(track)
        for b in np.flatnonzero(ids < 0):
            ids[b] = self.next_id
            kept.append(Track(self.next_id, boxes[b]))
            self.next_id += 1
        self.tracks = kept
        return ids

    @property
    def live_ids(self) -> set[int]:
        return {t.id for t in self.tracks}


@dataclass(frozen=True)
class OneEuro:
    """One-Euro filter settings (Casiez et al. 2012): ``min_cutoff`` (Hz) smooths slow motion, ``beta``
    lets the cutoff rise with speed, ``d_cutoff`` (Hz) smooths the speed estimate, ``freq`` (Hz) is
    the frame rate that turns frame steps into seconds."""

    min_cutoff: float = 1.0
    beta: float = 0.0
    d_cutoff: float = 1.0
    freq: float = 30.0

    def __post_init__(self) -> None:
        for name in ("min_cutoff", "d_cutoff", "freq"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
                raise ConfigError(f"OneEuro {name} must be a positive number, got {value!r}")
        if not isinstance(self.beta, (int, float)) or not self.beta >= 0:
            raise ConfigError(f"OneEuro beta must be a non-negative number, got {self.beta!r}")


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One track's filter over arrays of any fixed shape (e.g. keypoints (K, 2)), element-wise."""

    def __init__(self, settings: OneEuro) -> None:
        self.s = settings
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None
        self.t: int | None = None

    def __call__(self, x: np.ndarray, frame_index: int) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.x is None or self.x.shape != x.shape or frame_index <= self.t:
            self.x, self.dx, self.t = x.copy(), np.zeros_like(x), frame_index
            return x.copy()
        dt = (frame_index - self.t) / self.s.freq
        dx = (x - self.x) / dt
        self.dx = self.dx + _alpha(self.s.d_cutoff, dt) * (dx - self.dx)
        a = _alpha(self.s.min_cutoff + self.s.beta * np.abs(self.dx), dt)
        self.x = self.x + a * (x - self.x)
        self.t = frame_index
        return self.x.copy()


__all__ = ["IoUTracker", "OneEuro", "OneEuroFilter", "Track", "iou_matrix"]
