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
    """One Newton step on the log of blurred heatmaps at integer peaks ``locs`` (k, 2), for every channel.

    The reference (mmpose ``refine_keypoints_dark_udp``) reads the seven log values around each
    peak from the flattened, edge-padded (k, h + 2, w + 2) log maps at flat offsets from
    ``(x + 1) + (y + 1) * (w + 2)``. Channels without a positive maximum keep (-1, -1) and are still
    stepped: their offsets land on the padded corner, and those left of or above it on the last
    padded row of the previous channel (the last channel for channel 0, numpy's wrap-around). The
    same offsets are followed here, so such channels move exactly as in the reference. Only those
    seven values enter the step, so the clip and log are applied there alone.
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
    # An all-zero blur cannot be rescaled (the reference divides 0 by 0 and returns NaN); keep it unscaled.
    usable = after != 0
    ratio = np.where(usable, before / np.where(usable, after, 1), 1).astype(np.float32)

    wp, plane = w + 2, (h + 2) * (w + 2)
    # Offsets of I, I(x+1), I(y+1), I(x+1, y+1), I(x-1, y-1), I(x-1), I(y-1) in the padded flat maps.
    offsets = np.array([0, 1, wp, wp + 1, -wp - 1, -1, -wp])
    base = (locs[:, 0] + 1 + (locs[:, 1] + 1) * wp).astype(np.int64) + plane * np.arange(k)
    flat = base[:, None] + offsets  # (k, 7)
    ch, rest = flat // plane % k, flat % plane  # floor division: -1 is the previous channel's last element
    ys = np.clip(rest // wp - 1, 0, h - 1)  # padded row/col -> map row/col (the edge padding)
    xs = np.clip(rest % wp - 1, 0, w - 1)
    v = np.log(np.clip(blurred[ch, ys, xs] * ratio[ch], np.float32(0.001), np.float32(50.0)))
    c, xp, yp, xpyp, xmym, xm, ym = v.T

    gx, gy = 0.5 * (xp - xm), 0.5 * (yp - ym)
    dxx, dyy = xp - 2 * c + xm, yp - 2 * c + ym
    dxy = 0.5 * (xpyp - xp - yp + c + c - xm - ym + xmym)

    # inverse(Hessian + eps * I) . gradient, written out for 2 x 2
    a, b, d = dxx.astype(np.float64) + _EPS, dxy.astype(np.float64), dyy.astype(np.float64) + _EPS
    det = a * d - b * b
    ok = det != 0  # the reference's inverse would raise on a singular matrix
    det = np.where(ok, det, 1.0)
    step_x = np.where(ok, (d * gx - b * gy) / det, 0.0)
    step_y = np.where(ok, (a * gy - b * gx) / det, 0.0)
    out = locs.astype(np.float64)
    out[:, 0] -= step_x
    out[:, 1] -= step_y
    return out


def decode_heatmaps(heatmaps: np.ndarray, input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
                    blur_kernel_size: int = BLUR_KERNEL_SIZE, keypoints: Sequence[int] | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """UDP-DARK decoding of (K, h, w) heatmaps (or (N, K, h, w)); ``input_size`` is the network input (H, W).

    ``keypoints`` (channel indices) decodes only those channels, in that order, at a cost
    proportional to their number; the result equals those rows of the full decoding exactly
    (see :func:`decode_channels`).

    Returns keypoints (K, 2) float32 in network-input pixels and scores (K,) float32 (the
    heatmap maximum). Per channel: integer argmax, (-1, -1) heatmap pixels where the maximum is
    <= 0; then, as in the reference decoder, one Newton step on the log of the blurred heatmap for
    every channel, those at (-1, -1) included (spec 2.1, decoding steps 1-2; see ``_dark_udp``
    for what the step reads there). Then x * W / (w - 1), y * H / (h - 1).
    """
    hm = np.asarray(heatmaps, dtype=np.float32)
    if keypoints is not None:
        if hm.ndim == 4:
            pairs = [decode_heatmaps(x, input_size, blur_kernel_size, keypoints) for x in hm]
            return (np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, len(keypoints), 2), np.float32),
                    np.stack([p[1] for p in pairs]) if pairs else np.zeros((0, len(keypoints)), np.float32))
        if hm.ndim != 3 or hm.shape[1] < 2 or hm.shape[2] < 2:
            raise InvalidTensorError(f"heatmaps must have shape (K, h, w) with h, w >= 2, got {hm.shape}")
        return decode_channels(lambda ids: hm[ids], hm.shape[0], keypoints, input_size, blur_kernel_size)
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
    locs[scores <= 0] = -1.0
    if k:
        locs = _dark_udp(hm, locs, blur_kernel_size)
    H, W = input_size
    keypoints = locs * np.array([W / (w - 1), H / (h - 1)])
    return keypoints.astype(np.float32), scores.astype(np.float32)


def check_channels(keypoints: Sequence[int], num_channels: int) -> np.ndarray:
    """``keypoints`` as an int64 index array into ``num_channels`` heatmaps (refused otherwise)."""
    idx = np.asarray(keypoints)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu") or np.any(idx < 0) or np.any(idx >= num_channels):
        raise InvalidTensorError(f"keypoints must be channel indices in 0..{num_channels - 1}, got {keypoints!r}")
    return idx.astype(np.int64)


def decode_channels(channels, num_channels: int, keypoints: Sequence[int], input_size: tuple[int, int],
                    blur_kernel_size: int = BLUR_KERNEL_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """UDP-DARK decoding of the ``keypoints`` channels of a (``num_channels``, h, w) heatmap stack,
    equal to those rows of :func:`decode_heatmaps` on the whole stack; ``channels(ids)`` returns the
    (len(ids), h, w) maps of channel indices ``ids`` (so a caller can build only those, e.g.
    flip-averaged). The reference's step for a channel without a positive maximum reads the last
    padded row of the channel before it (see ``_dark_udp``): that neighbour is decoded alongside."""
    idx = check_channels(keypoints, num_channels)
    if not len(idx):
        return np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
    hm = np.asarray(channels(idx), dtype=np.float32)
    k, h, w = hm.shape
    flat = hm.reshape(k, -1)
    top = flat.argmax(axis=1)
    empty = flat[np.arange(k), top] <= 0
    if empty.any():  # each such channel right after its neighbour, so the wrap-around reads that one
        order = np.concatenate([[(c - 1) % num_channels, c] if e else [c] for c, e in zip(idx, empty, strict=True)])
        pos = np.cumsum([2 if e else 1 for e in empty]) - 1
        kps, scores = decode_heatmaps(np.asarray(channels(order), dtype=np.float32), input_size, blur_kernel_size)
        return kps[pos], scores[pos]
    return decode_heatmaps(hm, input_size, blur_kernel_size)
