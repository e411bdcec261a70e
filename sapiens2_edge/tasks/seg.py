"""Body-part segmentation (29 classes, spec 2.2): stretch resize in, logits -> labels out."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ..errors import InvalidTensorError
from ..spec import OUTPUT_NAMES
from .base import Pipeline
from .image import load_image
from .preprocess import normalize, stretch_resize
from .results import SegResult

SEG_CLASSES: tuple[str, ...] = (
    "Background", "Apparel", "Eyeglass", "Face_Neck", "Hair", "Left_Foot", "Left_Hand",
    "Left_Lower_Arm", "Left_Lower_Leg", "Left_Shoe", "Left_Sock", "Left_Upper_Arm",
    "Left_Upper_Leg", "Lower_Clothing", "Right_Foot", "Right_Hand", "Right_Lower_Arm",
    "Right_Lower_Leg", "Right_Shoe", "Right_Sock", "Right_Upper_Arm", "Right_Upper_Leg", "Torso",
    "Upper_Clothing", "Lower_Lip", "Upper_Lip", "Lower_Teeth", "Upper_Teeth", "Tongue",
)
NUM_SEG_CLASSES = len(SEG_CLASSES)

SEG_PALETTE = np.array(
    [(50, 50, 50), (255, 218, 0), (14, 204, 182), (128, 200, 255), (255, 0, 109), (189, 0, 204),
     (255, 0, 218), (0, 160, 204), (0, 255, 145), (204, 0, 131), (182, 0, 255), (255, 109, 0),
     (0, 255, 255), (72, 0, 255), (204, 131, 0), (255, 0, 0), (72, 255, 0), (189, 204, 0),
     (182, 255, 0), (102, 0, 204), (32, 72, 204), (0, 145, 255), (14, 204, 0), (0, 128, 72),
     (235, 205, 119), (115, 227, 112), (157, 113, 143), (132, 93, 50), (82, 21, 114)],
    dtype=np.uint8,
)
"""(29, 3) RGB colour per class, used for drawing."""

SEG_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((5, 14), (6, 15), (7, 16), (8, 17), (9, 18), (10, 19), (11, 20), (12, 21))
"""Left/right class pairs that trade places under a horizontal flip."""


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (H, W) or (H, W, C) float array to ``size`` = (H, W).

    OpenCV's INTER_LINEAR samples at ``(dst + 0.5) * in/out - 0.5`` with the edge clamp, the same
    as torch's bilinear with align_corners=False and no antialias, up- and downscaling alike.
    Keep C at 1, 3 or 4: OpenCV's float32 path for other channel counts is ~1e-5 less precise.
    """
    h, w = size
    return cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)


def logits_to_labels(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) logits -> (H, W) uint8 labels: bilinear resize to ``size``, then argmax.

    One class plane at a time with a running maximum: a large original image costs two H x W
    float planes instead of C, and single-channel resizes are OpenCV's fastest and exact float32
    path. Ties go to the lower class, as argmax.
    """
    c = logits.shape[0]
    if c > 256:
        raise InvalidTensorError(f"at most 256 classes fit uint8 labels, got {c}")
    best = np.full(size, -np.inf, dtype=np.float32)
    labels = np.zeros(size, dtype=np.uint8)
    better = np.empty(size, dtype=bool)
    for k in range(c):
        plane = resize_bilinear(np.ascontiguousarray(logits[k]), size)
        np.greater(plane, best, out=better)
        np.maximum(best, plane, out=best)
        np.copyto(labels, np.uint8(k), where=better)
    return labels


class SegPipeline(Pipeline):
    """Stretch the image to the input size; resize logits to the original size and argmax."""

    task = "seg"
    output_names = OUTPUT_NAMES["seg"]

    def preprocess(self, image: Any, boxes: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        self._no_boxes(boxes)
        image = load_image(image)
        batch = normalize(stretch_resize(image, self.input_size))[None]
        return batch, {"task": self.task, "batch_size": 1, "image_size": image.shape[:2]}

    def postprocess(self, outputs: Any, meta: dict[str, Any]) -> SegResult:
        (logits,) = self._outputs(outputs, meta)
        if logits.ndim != 4 or not 1 <= logits.shape[1] <= 256:
            raise InvalidTensorError(
                f"seg logits must have shape (1, classes, H, W) with at most 256 classes, got {logits.shape}"
            )
        names = SEG_CLASSES if logits.shape[1] == NUM_SEG_CLASSES else tuple(f"class_{i}" for i in range(logits.shape[1]))
        return SegResult(labels=logits_to_labels(logits[0], meta["image_size"]), class_names=names)
