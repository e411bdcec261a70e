"""Typed results, one per task.

Every result has ``arrays()`` (what gets saved as .npy), ``to_dict()`` / ``to_json()`` (pose:
every keypoint; dense tasks: a compact summary, never the full maps) and ``draw(image)`` (an
RGB uint8 visualisation with the image's shape).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _stats(a: np.ndarray) -> dict[str, Any]:
    """Per-channel min / max / mean of an (H, W, C) array, as plain floats."""
    flat = a.reshape(-1, a.shape[-1]).astype(np.float64)
    if flat.size == 0:
        return {"min": [], "max": [], "mean": []}
    return {
        "min": [float(v) for v in flat.min(0)],
        "max": [float(v) for v in flat.max(0)],
        "mean": [float(v) for v in flat.mean(0)],
    }


class _Result(ABC):
    task: str = ""

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """The raw result arrays, keyed by the name they are saved under."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (pose: every keypoint; dense tasks: a compact summary)."""

    def to_json(self, **kwargs: Any) -> str:
        """JSON text of :meth:`to_dict` (keyword arguments go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kwargs)

    @abstractmethod
    def draw(self, image: Any, **kwargs: Any) -> np.ndarray:
        """An RGB uint8 visualisation with the image's shape."""


@dataclass(eq=False)
class PoseResult(_Result):
    """Keypoints of N people in original-image pixels.

    ``boxes`` (N, 4) float32 [x1, y1, x2, y2] as given (or the whole image);
    ``keypoints`` (N, K, 2) float32 (x, y); ``scores`` (N, K) float32 (the flip-averaged heatmap
    maximum; <= 0 means the heatmap had no positive peak and the location is meaningless);
    ``image_size`` (H, W).
    """

    boxes: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]
    task = "pose"

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def num_keypoints(self) -> int:
        return int(self.keypoints.shape[1])

    def to_coco17(self) -> tuple[np.ndarray, np.ndarray]:
        """(keypoints (N, 17, 2), scores (N, 17)) in COCO-17 order."""
        from .keypoints import to_coco17

        return to_coco17(self.keypoints, self.scores)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"boxes": self.boxes, "keypoints": self.keypoints, "scores": self.scores}

    def instances(self) -> list[dict[str, Any]]:
        """Per person, in the demo JSON layout: bbox, keypoints [[x, y] x K], keypoint_scores [K]."""
        return [
            {
                "bbox": [float(v) for v in box],
                "keypoints": [[float(x), float(y)] for x, y in kps],
                "keypoint_scores": [float(s) for s in sc],
            }
            for box, kps, sc in zip(self.boxes, self.keypoints, self.scores, strict=True)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "image_size": [int(v) for v in self.image_size],
            "num_keypoints": self.num_keypoints,
            "instances": self.instances(),
        }

    def draw(self, image: Any, kpt_thr: float = 0.3, **kwargs: Any) -> np.ndarray:
        """Boxes, skeleton links and keypoints whose score is above ``kpt_thr``."""
        from .draw import draw_pose

        return draw_pose(image, self, kpt_thr=kpt_thr, **kwargs)


@dataclass(eq=False)
class SegResult(_Result):
    """``labels`` (H, W) uint8 class ids at the original image size."""

    labels: np.ndarray
    class_names: tuple[str, ...] = field(default=())
    task = "seg"

    def __post_init__(self) -> None:
        if not self.class_names:
            from .seg import SEG_CLASSES

            self.class_names = SEG_CLASSES

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.labels.shape[:2])

    @property
    def foreground(self) -> np.ndarray:
        """Boolean person mask: label > 0 (everything but Background)."""
        return self.labels > 0

    def mask(self, *classes: int | str) -> np.ndarray:
        """Boolean mask of the given classes (ids or names)."""
        ids = [self.class_names.index(c) if isinstance(c, str) else int(c) for c in classes]
        return np.isin(self.labels, ids)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"labels": self.labels}

    def to_dict(self) -> dict[str, Any]:
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        total = max(int(self.labels.size), 1)
        return {
            "task": self.task,
            "image_size": [int(v) for v in self.image_size],
            "num_classes": len(self.class_names),
            "class_pixel_counts": {n: int(c) for n, c in zip(self.class_names, counts, strict=False) if c},
            "foreground_fraction": float(counts[1:].sum() / total),
        }

    def draw(self, image: Any, alpha: float = 0.5, **kwargs: Any) -> np.ndarray:
        """The image blended with the class palette (``alpha`` = palette weight)."""
        from .draw import draw_seg

        return draw_seg(image, self.labels, alpha=alpha, **kwargs)


@dataclass(eq=False)
class NormalResult(_Result):
    """``normal`` (H, W, 3) float32 camera-frame unit normals (bilinearly resized, so only
    approximately unit length away from the network's pixel grid)."""

    normal: np.ndarray
    task = "normal"

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.normal.shape[:2])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"normal": self.normal}

    def to_dict(self) -> dict[str, Any]:
        norms = np.linalg.norm(self.normal.reshape(-1, 3).astype(np.float64), axis=1)
        return {
            "task": self.task,
            "image_size": [int(v) for v in self.image_size],
            "shape": list(self.normal.shape),
            "stats": _stats(self.normal),
            "mean_norm": float(norms.mean()) if norms.size else 0.0,
        }

    def draw(self, image: Any, alpha: float = 1.0, **kwargs: Any) -> np.ndarray:
        """(n + 1) / 2 * 255 as RGB, blended over the image with weight ``alpha``."""
        from .draw import draw_normal

        return draw_normal(image, self.normal, alpha=alpha, **kwargs)


@dataclass(eq=False)
class PointmapResult(_Result):
    """Metric camera-frame points of each pixel.

    ``points`` (H, W, 3) float32 = network pointmap / scale; ``scale`` the predicted s
    (= canonical focal / true focal); ``focal_length`` the derived focal length in
    original-image pixels (input width / s / letterbox resize factor).
    """

    points: np.ndarray
    scale: float
    focal_length: float
    task = "pointmap"

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.points.shape[:2])

    @property
    def depth(self) -> np.ndarray:
        """(H, W) float32 Z channel."""
        return self.points[:, :, 2]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"points": self.points, "depth": np.ascontiguousarray(self.depth)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "image_size": [int(v) for v in self.image_size],
            "shape": list(self.points.shape),
            "scale": float(self.scale),
            "focal_length_px": float(self.focal_length),
            "stats": _stats(self.points),
        }

    def draw(self, image: Any, alpha: float = 1.0, **kwargs: Any) -> np.ndarray:
        """Inverse depth through an OpenCV colormap, blended over the image with ``alpha``."""
        from .draw import draw_depth

        return draw_depth(image, self.depth, alpha=alpha, **kwargs)


@dataclass(eq=False)
class AlbedoResult(_Result):
    """``albedo`` (H, W, 3) float32 RGB in [0, 1]."""

    albedo: np.ndarray
    task = "albedo"

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.albedo.shape[:2])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"albedo": self.albedo}

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "image_size": [int(v) for v in self.image_size],
            "shape": list(self.albedo.shape),
            "stats": _stats(self.albedo),
        }

    def draw(self, image: Any, alpha: float = 1.0, **kwargs: Any) -> np.ndarray:
        """The albedo as an RGB image (albedo * 255), blended over the image with ``alpha``."""
        from .draw import draw_albedo

        return draw_albedo(image, self.albedo, alpha=alpha, **kwargs)
