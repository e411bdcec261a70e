"""Drawing primitives the task visualisations share: every drawing is RGB uint8 of the image's shape."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ..errors import ConfigError, InvalidImageError
from .image import load_image


def image_for(image: Any, size: tuple[int, int]) -> np.ndarray:
    """The image a result of ``size`` = (H, W) is drawn on, as RGB uint8 (refused if its size differs)."""
    img = load_image(image)
    if img.shape[:2] != tuple(size):
        raise InvalidImageError(
            f"the image is {img.shape[0]} x {img.shape[1]} (H x W) but the result is for a "
            f"{size[0]} x {size[1]} image; draw on the image the result was computed from"
        )
    return img


def blend(image: np.ndarray, vis: np.ndarray, alpha: float) -> np.ndarray:
    """``vis`` over ``image`` with weight ``alpha`` in [0, 1] (1: ``vis`` alone)."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 1.0:
        return np.ascontiguousarray(vis)
    return cv2.addWeighted(vis, alpha, image, 1.0 - alpha, 0.0)


def draw_over(image: Any, vis: np.ndarray, alpha: float) -> np.ndarray:
    """A per-pixel visualisation ``vis`` (H, W, 3) blended over the image it was computed from."""
    return blend(image_for(image, vis.shape[:2]), vis, alpha)
