"""Dense per-pixel tasks (normal, pointmap, albedo; spec 2.3-2.5): letterbox in, un-letterbox out."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ..errors import InvalidTensorError
from ..spec import OUTPUT_NAMES
from .base import Pipeline
from .image import load_image
from .preprocess import Letterbox, normalize
from .results import AlbedoResult, NormalResult, PointmapResult

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
    num_outputs = 2
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
