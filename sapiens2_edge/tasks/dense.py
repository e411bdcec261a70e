"""Dense per-pixel tasks (normal, pointmap, albedo; spec 2.3-2.5): letterbox in, un-letterbox out;
their result types and drawings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

from ..errors import InvalidTensorError
from ..spec import OUTPUT_NAMES
from .base import Pipeline, Result, channel_stats
from .draw import draw_over, finish
from .image import load_image
from .preprocess import Letterbox, normalize

NORMAL_EPS = 1e-8
POINTMAP_BLUR_PASSES = 4
POINTMAP_BLUR_KSIZE = 3
# Passed explicitly: with sigma=0 OpenCV uses a fixed [1/4, 1/2, 1/4] table for 3x3 kernels,
# not the sigma-0.8 Gaussian the spec names (which its own formula would give).
POINTMAP_BLUR_SIGMA = 0.8


def normalize_normals(normal: np.ndarray, eps: float = NORMAL_EPS) -> np.ndarray:
    """Divide (..., 3, H, W) normals by their per-pixel L2 norm, clamped to at least ``eps``."""
    norm = np.sqrt(np.sum(normal * normal, axis=-3, keepdims=True))
    return normal / np.maximum(norm, np.float32(eps))


def divide_by_scale(pointmap: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Canonical (B, 3, H, W) pointmap -> metric points, dividing each sample by its own scale.

    The reference demo divides a (B,3,H,W) tensor by a (B,1) one, which only broadcasts right for
    B = 1; here sample b is divided by ``scale[b]``.
    """
    s = np.asarray(scale, dtype=np.float32).reshape(len(pointmap), -1)
    if s.shape[1] != 1:
        raise InvalidTensorError(f"pointmap scale must have one value per sample, shape (B, 1); got {np.shape(scale)}")
    if (s == 0).any():
        raise InvalidTensorError("the predicted pointmap scale is 0, so metric points are undefined")
    return pointmap / s.reshape(-1, 1, 1, 1)


# -- drawing --------------------------------------------------------------------------------------
def normal_to_rgb(normal: np.ndarray) -> np.ndarray:
    """(H, W, 3) normals in [-1, 1] -> RGB uint8 via (n + 1) / 2 * 255."""
    return np.clip((normal + 1.0) * 0.5 * 255.0, 0, 255).astype(np.uint8)


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


def albedo_to_rgb(albedo: np.ndarray) -> np.ndarray:
    """(H, W, 3) albedo in [0, 1] -> RGB uint8."""
    return np.clip(np.round(albedo * 255.0), 0, 255).astype(np.uint8)


# -- results --------------------------------------------------------------------------------------
class _MapResult(Result):
    """A result holding one (H, W, 3) map at the original image size, in the field ``map_name``."""

    map_name: ClassVar[str] = ""

    @property
    def _map(self) -> np.ndarray:
        return getattr(self, self.map_name)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self._map.shape[:2])

    def arrays(self) -> dict[str, np.ndarray]:
        return {self.map_name: self._map}

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "image_size": [int(v) for v in self.image_size],
            "shape": list(self._map.shape),
            "stats": channel_stats(self._map),
            **({"random_weights": True} if self.random_weights else {}),
        }


@dataclass(eq=False)
class NormalResult(_MapResult):
    """``normal`` (H, W, 3) float32 camera-frame unit normals (bilinearly resized, so only
    approximately unit length away from the network's pixel grid)."""

    normal: np.ndarray
    task = "normal"
    map_name = "normal"

    def to_dict(self) -> dict[str, Any]:
        norms = np.linalg.norm(self.normal.reshape(-1, 3).astype(np.float64), axis=1)
        return {**super().to_dict(), "mean_norm": float(norms.mean()) if norms.size else 0.0}

    def draw(self, image: Any, alpha: float = 1.0, random_weights: bool | None = None) -> np.ndarray:
        """(n + 1) / 2 * 255 as RGB, blended over the image with weight ``alpha`` (a RANDOM WEIGHTS
        banner on top when ``random_weights``; None follows ``self.random_weights``)."""
        return finish(draw_over(image, normal_to_rgb(self.normal), alpha), self, random_weights)


@dataclass(eq=False)
class PointmapResult(_MapResult):
    """Metric camera-frame points of each pixel.

    ``points`` (H, W, 3) float32 = network pointmap / scale; ``scale`` the predicted s
    (= canonical focal / true focal); ``focal_length`` the derived focal length in
    original-image pixels (input width / s / letterbox resize factor).
    """

    points: np.ndarray
    scale: float
    focal_length: float
    task = "pointmap"
    map_name = "points"

    @property
    def depth(self) -> np.ndarray:
        """(H, W) float32 Z channel."""
        return self.points[:, :, 2]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"points": self.points, "depth": np.ascontiguousarray(self.depth)}

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "scale": float(self.scale), "focal_length_px": float(self.focal_length)}

    def draw(self, image: Any, alpha: float = 1.0, colormap: int = cv2.COLORMAP_INFERNO,
             random_weights: bool | None = None) -> np.ndarray:
        """Inverse depth through an OpenCV colormap, blended over the image with ``alpha`` (a RANDOM
        WEIGHTS banner on top when ``random_weights``; None follows ``self.random_weights``)."""
        return finish(draw_over(image, depth_to_rgb(self.depth, colormap), alpha), self, random_weights)


@dataclass(eq=False)
class AlbedoResult(_MapResult):
    """``albedo`` (H, W, 3) float32 RGB in [0, 1]."""

    albedo: np.ndarray
    task = "albedo"
    map_name = "albedo"

    def draw(self, image: Any, alpha: float = 1.0, random_weights: bool | None = None) -> np.ndarray:
        """The albedo as an RGB image (albedo * 255), blended over the image with ``alpha`` (a RANDOM
        WEIGHTS banner on top when ``random_weights``; None follows ``self.random_weights``)."""
        return finish(draw_over(image, albedo_to_rgb(self.albedo), alpha), self, random_weights)


# -- pipelines ------------------------------------------------------------------------------------
class _DensePipeline(Pipeline):
    def preprocess(self, image: Any, boxes: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        self._no_boxes(boxes)
        image = load_image(image)
        lb = Letterbox.fit(image.shape[:2], self.input_size)
        batch = normalize(lb.apply(image))[None]
        return batch, {"task": self.task, "batch_size": 1, "image_size": image.shape[:2], "letterbox": lb}

    def _map(self, a: np.ndarray, name: str) -> np.ndarray:
        """Check a (1, 3, H, W) network map and return it as (H, W, 3)."""
        if a.shape[1:] != (3, *self.input_size):
            raise InvalidTensorError(
                f"{self.task} output '{name}' has shape {a.shape}; expected (1, 3, {self.input_size[0]}, "
                f"{self.input_size[1]}) for input size {self.input_size}"
            )
        return a[0].transpose(1, 2, 0)


class NormalPipeline(_DensePipeline):
    """Surface normals: L2-normalise, crop the padding, bilinear resize (no renormalisation)."""

    task = "normal"
    output_names = OUTPUT_NAMES["normal"]

    def postprocess(self, outputs: Any, meta: dict[str, Any]) -> NormalResult:
        (normal,) = self._outputs(outputs, meta)
        n = self._map(normalize_normals(normal), "normal")
        return NormalResult(normal=meta["letterbox"].invert(n))


class PointmapPipeline(_DensePipeline):
    """Pointmap: divide by the predicted scale, crop, smooth when upsampling, bilinear resize."""

    task = "pointmap"
    output_names = OUTPUT_NAMES["pointmap"]

    def postprocess(self, outputs: Any, meta: dict[str, Any]) -> PointmapResult:
        pointmap, scale = self._outputs(outputs, meta)
        points = self._map(divide_by_scale(pointmap, scale), "pointmap")
        lb: Letterbox = meta["letterbox"]
        region = np.ascontiguousarray(lb.crop(points))
        h0, w0 = lb.original_size
        if h0 > region.shape[0] or w0 > region.shape[1]:
            for _ in range(POINTMAP_BLUR_PASSES):
                region = cv2.GaussianBlur(region, (POINTMAP_BLUR_KSIZE, POINTMAP_BLUR_KSIZE), POINTMAP_BLUR_SIGMA)
        if region.shape[:2] != (h0, w0):
            region = cv2.resize(region, (w0, h0), interpolation=cv2.INTER_LINEAR)
        s = float(scale.reshape(-1)[0])
        focal = self.input_size[1] / s / lb.scale
        return PointmapResult(points=region, scale=s, focal_length=focal)


class AlbedoPipeline(_DensePipeline):
    """Albedo: clamp to [0, 1], crop the padding, bilinear resize."""

    task = "albedo"
    output_names = OUTPUT_NAMES["albedo"]

    def postprocess(self, outputs: Any, meta: dict[str, Any]) -> AlbedoResult:
        (albedo,) = self._outputs(outputs, meta)
        a = self._map(np.clip(albedo, 0.0, 1.0), "albedo")
        return AlbedoResult(albedo=meta["letterbox"].invert(a))
