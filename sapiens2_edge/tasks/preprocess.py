"""Image geometry and normalisation shared by the tasks (spec section 3).

Sizes in this module follow OpenCV where it is called directly; elsewhere ``size`` is (H, W).
All geometry works on raw uint8 pixels; normalisation comes last, so padded pixels end up at
-MEAN/STD exactly as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InvalidImageError

MEAN_RGB = (123.675, 116.28, 103.53)
"""Per-channel mean in RGB order on the 0-255 scale."""
STD_RGB = (58.395, 57.12, 57.375)
"""Per-channel standard deviation in RGB order on the 0-255 scale (no /255 step)."""
MEAN = np.array(MEAN_RGB, dtype=np.float32)
STD = np.array(STD_RGB, dtype=np.float32)



def normalize(image: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> normalised float32 (3, H, W): ``(x - MEAN) / STD``."""
    x = (image.astype(np.float32) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def denormalize(chw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize` (float32 (3, H, W) -> float32 (H, W, 3) on 0-255)."""
    return chw.transpose(1, 2, 0) * STD + MEAN


def stretch_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``size`` = (H, W) ignoring the aspect ratio (the seg pre-processing).

    Interpolation is chosen by the width alone, as the reference does: INTER_AREA when the
    new width is smaller than the old one, INTER_CUBIC otherwise.
    """
    h, w = size
    interp = cv2.INTER_AREA if w < image.shape[1] else cv2.INTER_CUBIC
    return cv2.resize(image, (w, h), interpolation=interp)


@dataclass(frozen=True)
class Letterbox:
    """Where an image sits inside a letterboxed canvas."""

    scale: float  # resize factor original -> canvas
    new_size: tuple[int, int]  # (h, w) of the resized image inside the canvas
    top: int
    bottom: int
    left: int
    right: int
    original_size: tuple[int, int]  # (H0, W0)
    canvas_size: tuple[int, int]  # (H, W)

    @staticmethod
    def fit(original_size: tuple[int, int], canvas_size: tuple[int, int]) -> "Letterbox":
        h0, w0 = original_size
        h, w = canvas_size
        # Same float arithmetic as the reference (Python floats, floor via int()).
        scale = min(w / w0, h / h0)
        new_w, new_h = int(w0 * scale), int(h0 * scale)
        if new_w < 1 or new_h < 1:
            raise InvalidImageError(
                f"image of H x W = {h0} x {w0} is too elongated to letterbox into {h} x {w}: "
                f"it would be resized to {new_h} x {new_w}; expected an aspect ratio that "
                "leaves at least one pixel on each side"
            )
        pad_w, pad_h = w - new_w, h - new_h
        return Letterbox(
            scale=scale,
            new_size=(new_h, new_w),
            top=pad_h // 2,
            bottom=pad_h - pad_h // 2,
            left=pad_w // 2,
            right=pad_w - pad_w // 2,
            original_size=(h0, w0),
            canvas_size=(h, w),
        )

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Resize (INTER_LINEAR) and zero-pad a uint8 image onto the canvas."""
        new_h, new_w = self.new_size
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        return cv2.copyMakeBorder(
            resized, self.top, self.bottom, self.left, self.right, cv2.BORDER_CONSTANT, value=(0, 0, 0)
        )

    def crop(self, canvas: np.ndarray) -> np.ndarray:
        """Cut the image region out of an (H, W, ...) canvas-sized array."""
        h, w = self.canvas_size
        return canvas[self.top : h - self.bottom, self.left : w - self.right]

    def invert(self, canvas: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """Crop the padding and resize an (H, W, C) canvas-sized array back to the original size."""
        h0, w0 = self.original_size
        region = np.ascontiguousarray(self.crop(canvas))
        if region.shape[:2] == (h0, w0):
            return region
        return cv2.resize(region, (w0, h0), interpolation=interpolation)
