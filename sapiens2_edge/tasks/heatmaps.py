"""Pose heatmaps (spec 2.1): undoing the flip test and UDP-DARK decoding to network-input pixels."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..errors import InvalidTensorError
from ..spec import DEFAULT_INPUT_SIZE
from .keypoints import FLIP_INDICES

BLUR_KERNEL_SIZE = 11  # OpenCV's default sigma for 11 is 2.0, the reference's value
_EPS = float(np.finfo(np.float32).eps)


def flip_heatmaps(heatmaps: np.ndarray, flip_indices: Sequence[int] = FLIP_INDICES) -> np.ndarray:
    """Undo a horizontal flip of the input on (B, K, h, w) heatmaps: mirror W and swap left/right.

    Output channel k is input channel ``flip_indices[k]`` mirrored (no pixel shift).
    """
    src = np.ascontiguousarray(heatmaps, dtype=np.float32)
    out = np.empty_like(src)
    for b in range(src.shape[0]):
        for k, f in enumerate(flip_indices):
            cv2.flip(src[b, f], 1, dst=out[b, k])  # much faster than a reversed-stride numpy copy
    return out


def _dark_udp(heatmaps: np.ndarray, locs: np.ndarray, kernel: int) -> np.ndarray:
    """One Newton step on the log of blurred heatmaps at integer peaks ``locs`` (k, 2).

    Only the 3 x 3 neighbourhood of each peak enters the step, so the clip and log are applied
    there alone; clamping the neighbour indices to the map is the same as edge-padding by one.
    """
    k, h, w = heatmaps.shape
    r = (kernel - 1) // 2
    padded = np.zeros((k, h + 2 * r, w + 2 * r), dtype=np.float32)
    padded[:, r:r + h, r:r + w] = heatmaps
    # Channels stacked vertically: each has r zero rows above and below, so a kernel of radius r
    # never mixes two channels inside the part kept after cropping.
    blurred = cv2.GaussianBlur(padded.reshape(k * (h + 2 * r), w + 2 * r), (kernel, kernel), 0)
    blurred = blurred.reshape(k, h + 2 * r, w + 2 * r)[:, r:r + h, r:r + w]
    before = heatmaps.reshape(k, -1).max(axis=1)
    after = blurred.max(axis=(1, 2))
    usable = after != 0  # an all-non-positive blur cannot be rescaled; keep the integer peak
    ratio = np.where(usable, before / np.where(usable, after, 1), 1).astype(np.float32)

    x = locs[:, 0].astype(np.int64)
    y = locs[:, 1].astype(np.int64)
    xs = np.clip(x[:, None] + np.arange(-1, 2), 0, w - 1)  # (k, 3): x-1, x, x+1
    ys = np.clip(y[:, None] + np.arange(-1, 2), 0, h - 1)
    patch = blurred[np.arange(k)[:, None, None], ys[:, :, None], xs[:, None, :]]  # (k, 3 rows, 3 cols)
    lp = np.log(np.clip(patch * ratio[:, None, None], np.float32(0.001), np.float32(50.0)))

    c = lp[:, 1, 1]
    xp, xm, yp, ym = lp[:, 1, 2], lp[:, 1, 0], lp[:, 2, 1], lp[:, 0, 1]
    xpyp, xmym = lp[:, 2, 2], lp[:, 0, 0]
    gx, gy = 0.5 * (xp - xm), 0.5 * (yp - ym)
    dxx, dyy = xp - 2 * c + xm, yp - 2 * c + ym
    dxy = 0.5 * (xpyp - xp - yp + c + c - xm - ym + xmym)

    # inverse(Hessian + eps * I) . gradient, written out for 2 x 2
    a, b, d = dxx.astype(np.float64) + _EPS, dxy.astype(np.float64), dyy.astype(np.float64) + _EPS
    det = a * d - b * b
    ok = usable & (det != 0)
    det = np.where(ok, det, 1.0)
    step_x = np.where(ok, (d * gx - b * gy) / det, 0.0)
    step_y = np.where(ok, (a * gy - b * gx) / det, 0.0)
    out = locs.astype(np.float64)
    out[:, 0] -= step_x
    out[:, 1] -= step_y
    return out


def decode_heatmaps(heatmaps: np.ndarray, input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
                    blur_kernel_size: int = BLUR_KERNEL_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """UDP-DARK decoding of (K, h, w) heatmaps (or (N, K, h, w)); ``input_size`` is the network input (H, W).

    Returns keypoints (K, 2) float32 in network-input pixels and scores (K,) float32 (the
    heatmap maximum). Per channel: integer argmax; if the maximum is <= 0 the location is
    (-1, -1) heatmap pixels and is not refined; otherwise one Newton step on the log of the
    blurred heatmap (spec 2.1, decoding steps 1-2). Then x * W / (w - 1), y * H / (h - 1).
    """
    hm = np.asarray(heatmaps, dtype=np.float32)
    if hm.ndim == 4:
        pairs = [decode_heatmaps(x, input_size, blur_kernel_size) for x in hm]
        k = hm.shape[1]
        return (np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, k, 2), np.float32),
                np.stack([p[1] for p in pairs]) if pairs else np.zeros((0, k), np.float32))
    if hm.ndim != 3 or hm.shape[1] < 2 or hm.shape[2] < 2:
        raise InvalidTensorError(f"heatmaps must have shape (K, h, w) with h, w >= 2, got {hm.shape}")
    k, h, w = hm.shape
    flat = hm.reshape(k, -1)
    idx = flat.argmax(axis=1)
    scores = flat[np.arange(k), idx]
    locs = np.stack([idx % w, idx // w], axis=1).astype(np.float64)
    valid = scores > 0
    locs[~valid] = -1.0
    if valid.any():
        locs[valid] = _dark_udp(hm[valid], locs[valid], blur_kernel_size)
    H, W = input_size
    keypoints = locs * np.array([W / (w - 1), H / (h - 1)])
    return keypoints.astype(np.float32), scores.astype(np.float32)
