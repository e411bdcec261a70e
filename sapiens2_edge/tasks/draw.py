"""Visualisations. Every function takes the original image and returns RGB uint8 of its shape."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ..errors import ConfigError, InvalidImageError
from .image import load_image
from .keypoints import COCO17_SKELETON, KEYPOINT_GROUPS, NUM_KEYPOINTS, SKELETON
from .seg import SEG_PALETTE

if TYPE_CHECKING:
    from .results import PoseResult

GROUP_COLORS: dict[str, tuple[int, int, int]] = {
    "body": (51, 153, 255),
    "feet": (255, 128, 0),
    "right_hand": (255, 51, 51),
    "left_hand": (0, 255, 0),
    "extra": (255, 255, 0),
    "face": (255, 255, 255),
}
"""RGB colour of the keypoints and links of each keypoint group."""
BOX_COLOR = (0, 255, 0)


def _image_for(image: Any, size: tuple[int, int]) -> np.ndarray:
    img = load_image(image)
    if img.shape[:2] != tuple(size):
        raise InvalidImageError(
            f"the image is {img.shape[0]} x {img.shape[1]} (H x W) but the result is for a "
            f"{size[0]} x {size[1]} image; draw on the image the result was computed from"
        )
    return img


def _blend(image: np.ndarray, vis: np.ndarray, alpha: float) -> np.ndarray:
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 1.0:
        return np.ascontiguousarray(vis)
    return cv2.addWeighted(vis, alpha, image, 1.0 - alpha, 0.0)


def _color_of(index: int, k: int) -> tuple[int, int, int]:
    if k != NUM_KEYPOINTS:
        return GROUP_COLORS["body"]
    for name, r in KEYPOINT_GROUPS.items():
        if index in r:
            return GROUP_COLORS[name]
    return GROUP_COLORS["body"]


def draw_pose(image: Any, result: "PoseResult", kpt_thr: float = 0.3, radius: int | None = None,
              thickness: int | None = None, boxes: bool = True) -> np.ndarray:
    """Boxes, skeleton links and the keypoints scoring above ``kpt_thr``.

    308-keypoint results use :data:`~.keypoints.SKELETON`, 17-keypoint ones the COCO skeleton,
    any other count only points. Sizes scale with the image unless given.
    """
    canvas = _image_for(image, result.image_size).copy()
    h, w = canvas.shape[:2]
    radius = radius or max(1, round(max(h, w) / 400))
    thickness = thickness or max(1, radius // 2)
    k = result.keypoints.shape[1] if result.keypoints.ndim == 3 else 0
    links = SKELETON if k == NUM_KEYPOINTS else COCO17_SKELETON if k == 17 else ()
    colors = [_color_of(i, k) for i in range(k)]
    limit = 4 * max(h, w)  # points far outside cannot be drawn meaningfully
    for box, kps, scores in zip(result.boxes, result.keypoints, result.scores, strict=True):
        if boxes:
            x1, y1, x2, y2 = (int(round(float(v))) for v in box[:4])
            cv2.rectangle(canvas, (x1, y1), (x2, y2), BOX_COLOR, thickness, cv2.LINE_AA)
        visible = (scores > kpt_thr) & np.isfinite(kps).all(1) & (np.abs(kps) < limit).all(1)
        pts = np.round(np.nan_to_num(kps)).astype(np.int64)
        for a, b in links:
            if visible[a] and visible[b]:
                cv2.line(canvas, tuple(map(int, pts[a])), tuple(map(int, pts[b])), colors[b], thickness, cv2.LINE_AA)
        for i in np.flatnonzero(visible):
            cv2.circle(canvas, tuple(map(int, pts[i])), radius, colors[i], -1, cv2.LINE_AA)
    return canvas


def colorize_labels(labels: np.ndarray, palette: np.ndarray = SEG_PALETTE) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) RGB palette colours (ids past the palette wrap around)."""
    palette = np.asarray(palette, dtype=np.uint8)
    return palette[labels.astype(np.int64) % len(palette)]


def draw_seg(image: Any, labels: np.ndarray, alpha: float = 0.5, palette: np.ndarray = SEG_PALETTE) -> np.ndarray:
    """The image blended with the palette colour of each pixel's class."""
    img = _image_for(image, labels.shape[:2])
    return _blend(img, colorize_labels(labels, palette), alpha)


def normal_to_rgb(normal: np.ndarray) -> np.ndarray:
    """(H, W, 3) normals in [-1, 1] -> RGB uint8 via (n + 1) / 2 * 255."""
    return np.clip((normal + 1.0) * 0.5 * 255.0, 0, 255).astype(np.uint8)


def draw_normal(image: Any, normal: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    img = _image_for(image, normal.shape[:2])
    return _blend(img, normal_to_rgb(normal), alpha)


def depth_to_rgb(depth: np.ndarray, colormap: int = cv2.COLORMAP_INFERNO,
                 near: float = 0.1, far: float = 250.0) -> np.ndarray:
    """(H, W) depth -> RGB uint8: inverse depth (depth clamped to [near, far]) min-max scaled
    over the valid pixels and passed through an OpenCV colormap (near = bright). Pixels with
    depth <= 0 or not finite are black."""
    valid = np.isfinite(depth) & (depth > 0)
    inv = np.zeros(depth.shape, dtype=np.float64)
    inv[valid] = 1.0 / np.clip(depth[valid], near, far)
    u8 = np.zeros(depth.shape, dtype=np.uint8)
    if valid.any():
        lo, hi = inv[valid].min(), inv[valid].max()
        u8[valid] = np.round((inv[valid] - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(u8, colormap), cv2.COLOR_BGR2RGB)
    rgb[~valid] = 0
    return rgb


def draw_depth(image: Any, depth: np.ndarray, alpha: float = 1.0, colormap: int = cv2.COLORMAP_INFERNO) -> np.ndarray:
    img = _image_for(image, depth.shape[:2])
    return _blend(img, depth_to_rgb(depth, colormap), alpha)


def albedo_to_rgb(albedo: np.ndarray) -> np.ndarray:
    """(H, W, 3) albedo in [0, 1] -> RGB uint8."""
    return np.clip(np.round(albedo * 255.0), 0, 255).astype(np.uint8)


def draw_albedo(image: Any, albedo: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    img = _image_for(image, albedo.shape[:2])
    return _blend(img, albedo_to_rgb(albedo), alpha)
