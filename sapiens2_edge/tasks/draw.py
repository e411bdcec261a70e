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


# -- annotations: the random-weights banner, text that fits, the seg legend -------------------------
RANDOM_WEIGHTS_TEXT = "RANDOM WEIGHTS - predictions are noise"
BANNER_COLOR = (200, 0, 0)
TEXT_COLOR = (255, 255, 255)
PANEL_COLOR = (24, 24, 24)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def text_scale(text: str, max_w: int, max_h: int, thickness: int = 1) -> float:
    """The largest font scale (at most 2) at which ``text`` fits ``max_w`` x ``max_h`` pixels (0: none)."""
    (w, h), base = cv2.getTextSize(text, FONT, 1.0, thickness)
    return max(0.0, min(2.0, max_w / max(w, 1), max_h / max(h + base, 1)))


def put_text(canvas: np.ndarray, text: str, x: int, y: int, w: int, h: int, color=TEXT_COLOR) -> bool:
    """Write ``text`` as large as fits in the box (x, y, w, h), vertically centred; False when even
    a tiny font does not fit (nothing is drawn)."""
    thickness = 2 if h >= 28 else 1
    scale = text_scale(text, w, h, thickness)
    if scale < 0.25:
        return False
    (_, th), base = cv2.getTextSize(text, FONT, scale, thickness)
    cv2.putText(canvas, text, (x, y + (h + th - base) // 2), FONT, scale, color, thickness, cv2.LINE_AA)
    return True


def banner_height(image_h: int) -> int:
    return min(image_h, max(12, min(40, round(image_h * 0.05))))


def mark_random_weights(canvas: np.ndarray) -> np.ndarray:
    """Write RANDOM WEIGHTS across the top of ``canvas`` (in place): a red band with white text,
    so a picture made from a randomly initialised model is never taken for a prediction."""
    h, w = canvas.shape[:2]
    band = banner_height(h)
    canvas[:band] = BANNER_COLOR
    pad = max(1, band // 8)
    for text in (RANDOM_WEIGHTS_TEXT, "RANDOM WEIGHTS", "RANDOM"):
        if put_text(canvas, text, pad, pad, w - 2 * pad, band - 2 * pad):
            break
    return canvas


def finish(canvas: np.ndarray, result: Any, random_weights: bool | None) -> np.ndarray:
    """The last step of every task drawing: the banner when the result came from random weights
    (``random_weights``: None follows ``result.random_weights``)."""
    if random_weights if random_weights is not None else getattr(result, "random_weights", False):
        mark_random_weights(canvas)
    return canvas


def legend_rows(entries: list[tuple[str, tuple[int, int, int]]], row_h: int) -> tuple[int, float]:
    """Width in pixels of a legend of (name, colour) rows ``row_h`` high, and its font scale."""
    scale = min(text_scale(name, 10_000, row_h - 4) for name, _ in entries)
    text_w = max(cv2.getTextSize(name, FONT, scale, 1)[0][0] for name, _ in entries)
    return row_h + text_w + 8, scale


def draw_legend(canvas: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]], x: int, y: int,
                row_h: int, rows: int, width: int, scale: float, opacity: float = 0.8) -> None:
    """Swatch + name rows in a dark box at (x, y) (in place); entries past ``rows`` become '+N more'."""
    shown = entries if len(entries) <= rows else [*entries[:rows - 1], (f"+{len(entries) - rows + 1} more", None)]
    box = canvas[y:y + row_h * len(shown) + 4, x:x + width]
    box[:] = (box * (1 - opacity) + np.array(PANEL_COLOR) * opacity).astype(np.uint8)
    for i, (name, color) in enumerate(shown):
        top = y + 2 + i * row_h
        if color is not None:
            canvas[top + 2:top + row_h - 2, x + 4:x + row_h] = color
        (_, th), base = cv2.getTextSize(name, FONT, scale, 1)
        cv2.putText(canvas, name, (x + row_h + 4, top + (row_h + th - base) // 2), FONT, scale, TEXT_COLOR, 1,
                    cv2.LINE_AA)
