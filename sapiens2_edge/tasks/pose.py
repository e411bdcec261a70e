"""Top-down 308-keypoint pose (spec 2.1): UDP person crops, flip test, UDP-DARK decoding.

Coordinates: image pixels are indexed at pixel centres (0 .. W0-1); the network input is
``input_size`` = (H, W) and the heatmaps are (h, w), a quarter of it for the released heads.
"""

from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np

from ..errors import ConfigError, InvalidBoxError, InvalidImageError, InvalidTensorError
from ..spec import DEFAULT_INPUT_SIZE, OUTPUT_NAMES
from .base import Pipeline
from .image import load_image
from .keypoints import FLIP_INDICES, NUM_KEYPOINTS
from .preprocess import normalize
from .results import PoseResult

BBOX_PADDING = 1.25
BLUR_KERNEL_SIZE = 11  # OpenCV's default sigma for 11 is 2.0, the reference's value
_EPS = float(np.finfo(np.float32).eps)


# -- boxes and crops ----------------------------------------------------------------------------
def validate_boxes(boxes: Any, image_size: tuple[int, int]) -> np.ndarray:
    """Check person boxes against an image of ``image_size`` = (H, W); return (n, 4) float64.

    Accepts an (n, 4) array-like of [x1, y1, x2, y2] in pixels (a single box of 4 numbers is
    taken as n = 1); an optional 5th column (a detector score) is ignored. A box may stick out
    of the image (the crop pads with zeros) but must overlap it.
    """
    h0, w0 = image_size
    try:
        b = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidBoxError(f"boxes must be numbers in an (n, 4) array of [x1, y1, x2, y2]; {e}") from None
    if b.ndim == 1 and b.shape[0] in (4, 5):
        b = b[None]
    elif b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] not in (4, 5):
        raise InvalidBoxError(
            f"boxes must be an (n, 4) array of [x1, y1, x2, y2] (or (n, 5) with a score column), got shape {b.shape}"
        )
    b = b[:, :4]
    for i, box in enumerate(b):
        x1, y1, x2, y2 = box
        shown = "[" + ", ".join(f"{v:g}" for v in box) + "]"
        if not np.isfinite(box).all():
            raise InvalidBoxError(f"box {i} = {shown} contains NaN or inf; expected finite pixel coordinates [x1, y1, x2, y2]")
        if x2 <= x1 or y2 <= y1:
            raise InvalidBoxError(f"box {i} = {shown} is degenerate; expected x2 > x1 and y2 > y1 ([x1, y1, x2, y2] order)")
        if x2 < 0 or y2 < 0 or x1 > w0 - 1 or y1 > h0 - 1:
            raise InvalidBoxError(
                f"box {i} = {shown} lies entirely outside the {w0} x {h0} (W x H) image; expected it to "
                f"overlap x in [0, {w0 - 1}], y in [0, {h0 - 1}]"
            )
    return b


def box_to_center_size(boxes: np.ndarray, aspect: float, padding: float = BBOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) xyxy boxes -> centres (n, 2) and padded, aspect-fixed sizes (n, 2) = (w, h).

    ``aspect`` is the network input's W / H: the box grows along one side to match it.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centers = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    sizes = (boxes[:, 2:] - boxes[:, :2]) * padding
    w, h = sizes[:, 0].copy(), sizes[:, 1].copy()
    wide = w > aspect * h
    h[wide] = w[wide] / aspect
    w[~wide] = aspect * h[~wide]
    return centers, np.stack([w, h], axis=1)


def udp_warp_matrix(center: Sequence[float], size: Sequence[float], input_size: tuple[int, int]) -> np.ndarray:
    """(2, 3) affine map from image pixels to crop pixels (UDP, no rotation).

    The box's left/right edges go to u = 0 and W-1, its top/bottom edges to v = 0 and H-1.
    """
    H, W = input_size
    (cx, cy), (bw, bh) = center, size
    sx, sy = (W - 1) / bw, (H - 1) / bh
    return np.array([[sx, 0.0, sx * (bw * 0.5 - cx)], [0.0, sy, sy * (bh * 0.5 - cy)]], dtype=np.float64)


def crop_person(image: np.ndarray, center: Sequence[float], size: Sequence[float], input_size: tuple[int, int]) -> np.ndarray:
    """Warp one person box of an RGB uint8 image to the network input size (zero borders)."""
    H, W = input_size
    m = udp_warp_matrix(center, size, input_size)
    shrink = min(np.linalg.norm(m[0, :2]), np.linalg.norm(m[1, :2])) < 1
    interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return cv2.warpAffine(image, m, (W, H), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


# -- heatmaps ------------------------------------------------------------------------------------
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


def decode_heatmaps(heatmaps: np.ndarray, input_size: tuple[int, int] = DEFAULT_INPUT_SIZE[::-1],
                    blur_kernel_size: int = BLUR_KERNEL_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """UDP-DARK decoding of (K, h, w) heatmaps (or (N, K, h, w)); ``input_size`` is (W, H).

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
    W, H = input_size
    keypoints = locs * np.array([W / (w - 1), H / (h - 1)])
    return keypoints.astype(np.float32), scores.astype(np.float32)


def input_to_image(keypoints: np.ndarray, center: Sequence[float], size: Sequence[float],
                   input_size: tuple[int, int]) -> np.ndarray:
    """Network-input pixels -> image pixels, as the reference demo does: x / W * w_box + cx - w_box / 2.

    The crop used (W - 1) / w_box and this divides by W; combined with the decoder's
    W / (w - 1) the two cancel, so a UDP-encoded target maps back exactly.
    """
    H, W = input_size
    (cx, cy), (bw, bh) = center, size
    out = np.asarray(keypoints, dtype=np.float64) / np.array([W, H]) * np.array([bw, bh])
    return out + np.array([cx - bw * 0.5, cy - bh * 0.5])


# -- pipeline ------------------------------------------------------------------------------------
class PosePipeline(Pipeline):
    """Top-down pose over person boxes (None = the whole image).

    With ``flip_test`` (default, as the reference) ``preprocess`` returns 2n crops: the n crops
    followed by their horizontal mirrors; ``postprocess`` expects heatmaps for all 2n.
    """

    task = "pose"
    output_names = OUTPUT_NAMES["pose"]
    options = {"flip_test": True, "bbox_padding": BBOX_PADDING, "blur_kernel_size": BLUR_KERNEL_SIZE}

    def _validate_options(self) -> None:
        if not self.bbox_padding > 0:
            raise ConfigError(f"bbox_padding must be positive, got {self.bbox_padding}")
        if self.blur_kernel_size < 1 or self.blur_kernel_size % 2 == 0:
            raise ConfigError(f"blur_kernel_size must be a positive odd integer, got {self.blur_kernel_size}")

    def preprocess(self, image: Any, boxes: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        image = load_image(image)
        h0, w0 = image.shape[:2]
        if boxes is None:
            if h0 < 2 and w0 < 2:
                raise InvalidImageError(f"a {h0} x {w0} image is too small for pose; expected at least 2 pixels on one side")
            boxes = np.array([[0.0, 0.0, w0 - 1.0, h0 - 1.0]])
        else:
            boxes = validate_boxes(boxes, (h0, w0))
        H, W = self.input_size
        centers, sizes = box_to_center_size(boxes, W / H, self.bbox_padding)
        batch = np.empty((len(boxes), 3, H, W), dtype=np.float32)
        for i, (c, s) in enumerate(zip(centers, sizes, strict=True)):
            batch[i] = normalize(crop_person(image, c, s, self.input_size))
        if self.flip_test:
            batch = np.ascontiguousarray(np.concatenate([batch, batch[..., ::-1]]))
        meta = {
            "task": self.task, "batch_size": len(batch), "image_size": (h0, w0), "num_instances": len(boxes),
            "boxes": boxes, "centers": centers, "sizes": sizes, "flip_test": self.flip_test,
        }
        return batch, meta

    def postprocess(self, outputs: Any, meta: dict[str, Any]) -> PoseResult:
        n = meta["num_instances"]
        if n == 0:
            k = NUM_KEYPOINTS
            return PoseResult(np.zeros((0, 4), np.float32), np.zeros((0, k, 2), np.float32),
                              np.zeros((0, k), np.float32), tuple(meta["image_size"]))
        (raw,) = self._outputs(outputs, meta)
        if raw.ndim != 4 or raw.shape[2] < 2 or raw.shape[3] < 2:
            raise InvalidTensorError(f"pose heatmaps must have shape (B, K, h, w) with h, w >= 2, got {raw.shape}")
        hm = raw
        if meta["flip_test"]:
            if raw.shape[1] != len(FLIP_INDICES):
                raise InvalidTensorError(
                    f"flip test needs {len(FLIP_INDICES)} keypoint heatmaps (the flip table), got {raw.shape[1]}; "
                    "use flip_test=False for other keypoint sets"
                )
            hm = flip_heatmaps(raw[n:])  # average with the unflipped pass: (a + b) / 2
            hm += raw[:n]
            hm *= np.float32(0.5)
        H, W = self.input_size
        keypoints = np.empty((n, hm.shape[1], 2), dtype=np.float32)
        scores = np.empty((n, hm.shape[1]), dtype=np.float32)
        for i in range(n):
            kps, scores[i] = decode_heatmaps(hm[i], (W, H), self.blur_kernel_size)
            keypoints[i] = input_to_image(kps, meta["centers"][i], meta["sizes"][i], self.input_size)
        return PoseResult(meta["boxes"].astype(np.float32), keypoints, scores, tuple(meta["image_size"]))


def pose_demo_json(results: Sequence[PoseResult], image_names: Sequence[str], kpt_thr: float = 0.3,
                   video: str | None = None) -> dict[str, Any]:
    """The reference demo's JSON layout for a sequence of pose results (one per frame/image).

    ``image_size`` is the first frame's [H, W]; ``kpt_thr`` is only recorded (it affects
    drawing, not which keypoints are written).
    """
    if len(results) != len(image_names):
        raise ConfigError(f"got {len(results)} results but {len(image_names)} image names; expected one name per result")
    return {
        "video": video,
        "image_size": [int(v) for v in results[0].image_size] if results else None,
        "num_keypoints": results[0].num_keypoints if results else NUM_KEYPOINTS,
        "kpt_thr_used": float(kpt_thr),
        "frames": [{"image_name": str(name), "instances": r.instances()} for r, name in zip(results, image_names, strict=True)],
    }
