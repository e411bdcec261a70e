"""The detector's pre-processing (mmdet's RTMDet test pipeline), torch-free: keep-ratio resize into
640 x 640 (mmcv's rescale: scale = min(640 / long side, 640 / short side), new size rounded half
up, bilinear), pad bottom / right to 640 x 640 with 114, then (x - mean) / std on the **BGR**
image (no channel swap)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InvalidImageError
from .config import INPUT_SIZE, MEAN_BGR, PAD_VALUE, STD_BGR

_MEAN = np.array(MEAN_BGR, dtype=np.float32)
_STD = np.array(STD_BGR, dtype=np.float32)


@dataclass(frozen=True)
class Letterbox:
    """How one image was placed into the network input."""

    image_size: tuple[int, int]  # original (H, W)
    resized_size: tuple[int, int]  # (H, W) after the keep-ratio resize, at the top-left of the input
    scale: tuple[float, float]  # (w_scale, h_scale) = resized / original, per axis
    input_size: tuple[int, int] = INPUT_SIZE  # (H, W) of the padded network input

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) xyxy boxes in network-input pixels -> original-image pixels (times 1 / scale in
        float32, as mmdet rescales)."""
        inv = np.array([1 / self.scale[0], 1 / self.scale[1]] * 2, dtype=np.float32)
        return np.asarray(boxes, dtype=np.float32) * inv

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_image`."""
        w_scale, h_scale = self.scale
        return (np.asarray(boxes, dtype=np.float32) * np.array([w_scale, h_scale, w_scale, h_scale],
                                                              dtype=np.float32)).astype(np.float32)


def letterbox_geometry(image_size: tuple[int, int], input_size: tuple[int, int] = INPUT_SIZE) -> Letterbox:
    """Where an image of ``image_size`` = (H, W) goes in the network input (mmcv ``rescale_size``)."""
    h, w = (int(v) for v in image_size)
    if h <= 0 or w <= 0:
        raise InvalidImageError(f"image is empty (H x W = {h} x {w}); expected at least 1 x 1 pixels")
    long_edge, short_edge = max(input_size), min(input_size)
    s = min(long_edge / max(h, w), short_edge / min(h, w))
    # mmcv rounds half up; a side that would round to 0 pixels (aspect beyond 1:1280) is kept at 1
    new_w, new_h = max(int(w * s + 0.5), 1), max(int(h * s + 0.5), 1)
    return Letterbox((h, w), (new_h, new_w), (new_w / w, new_h / h), tuple(input_size))


def prepare_input(image_rgb: np.ndarray, input_size: tuple[int, int] = INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """RGB uint8 (H, W, 3) -> the normalised BGR network input (3, 640, 640) float32 and its geometry."""
    if not isinstance(image_rgb, np.ndarray) or image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 \
            or image_rgb.shape[2] != 3:
        got = f"{image_rgb.dtype} {image_rgb.shape}" if isinstance(image_rgb, np.ndarray) else type(image_rgb).__name__
        raise InvalidImageError(f"the detector expects an RGB uint8 image of shape (H, W, 3), got {got}")
    box = letterbox_geometry(image_rgb.shape[:2], input_size)
    bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
    new_h, new_w = box.resized_size
    resized = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((*input_size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    x = (canvas.astype(np.float32) - _MEAN) / _STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)), box


__all__ = ["Letterbox", "letterbox_geometry", "prepare_input"]
