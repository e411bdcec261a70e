"""Body-part segmentation (29 classes, spec 2.2): stretch resize in, logits -> labels out; the
result type and its drawing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..errors import ConfigError, InvalidTensorError
from ..spec import OUTPUT_NAMES
from .base import Pipeline, Result
from .draw import PANEL_COLOR, banner_height, draw_legend, draw_over, finish, legend_rows
from .image import load_image
from .preprocess import normalize, stretch_resize

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


def colorize_labels(labels: np.ndarray, palette: np.ndarray = SEG_PALETTE) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) RGB palette colours (ids past the palette wrap around)."""
    palette = np.asarray(palette, dtype=np.uint8)
    return palette[labels.astype(np.int64) % len(palette)]


LEGENDS = ("inside", "side", "none")


def legend_entries(labels: np.ndarray, class_names: tuple[str, ...] = SEG_CLASSES,
                   palette: np.ndarray = SEG_PALETTE) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, RGB colour) of each class present in ``labels`` but Background, most pixels first."""
    palette = np.asarray(palette, dtype=np.uint8)
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    order = sorted((i for i in np.flatnonzero(counts) if i != 0), key=lambda i: (-counts[i], i))
    return [(class_names[i] if i < len(class_names) else f"class_{i}",
             tuple(int(c) for c in palette[i % len(palette)])) for i in order]


def draw_seg(image: Any, labels: np.ndarray, alpha: float = 0.5, palette: np.ndarray = SEG_PALETTE,
             legend: str = "inside", class_names: tuple[str, ...] = SEG_CLASSES, top: int = 0) -> np.ndarray:
    """The image blended with the palette colour of each pixel's class, with a legend of the classes
    present (colour swatch + name, most pixels first).

    ``legend``: ``inside`` (default; the output keeps the image's shape) puts it in the image corner
    that covers the fewest person pixels, and leaves it out when the image is too small for it to
    be readable; ``side`` appends it as a panel on the right (the output is wider); ``none``.
    ``top``: rows kept free at the top (for the random-weights banner).
    """
    if legend not in LEGENDS:
        raise ConfigError(f"legend must be one of {', '.join(LEGENDS)}, got {legend!r}")
    vis = draw_over(image, colorize_labels(labels, palette), alpha)
    entries = legend_entries(labels, class_names, palette) if legend != "none" else []
    if not entries:
        return vis
    h, w = vis.shape[:2]
    row_h = max(16, min(28, round(h / 30)))
    width, scale = legend_rows(entries, row_h)
    rows = min(len(entries), (h - top - 4) // row_h)
    if rows < 1 or scale < 0.25:
        return vis
    if legend == "side":
        panel = np.empty((h, width, 3), np.uint8)
        panel[:] = PANEL_COLOR
        draw_legend(panel, entries, 0, top, row_h, rows, width, scale, opacity=1.0)
        return np.concatenate([vis, panel], axis=1)
    if width > w // 2:
        return vis
    box_h = rows * row_h + 4
    corners = [(w - width, top), (0, top), (w - width, h - box_h), (0, h - box_h)]
    x, y = min(corners, key=lambda c: int(np.count_nonzero(labels[c[1]:c[1] + box_h, c[0]:c[0] + width])))
    draw_legend(vis, entries, x, y, row_h, rows, width, scale)
    return vis


@dataclass(eq=False)
class SegResult(Result):
    """``labels`` (H, W) uint8 class ids at the original image size."""

    labels: np.ndarray
    class_names: tuple[str, ...] = field(default=SEG_CLASSES)
    task = "seg"

    def __post_init__(self) -> None:
        if not self.class_names:
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
            **({"random_weights": True} if self.random_weights else {}),
        }

    def draw(self, image: Any, alpha: float = 0.5, legend: str = "inside", random_weights: bool | None = None,
             **kwargs: Any) -> np.ndarray:
        """The image blended with the class palette (``alpha`` = palette weight) and a legend of the
        classes present (``legend``: inside, side or none; see :func:`draw_seg`); a RANDOM WEIGHTS
        banner on top when the result came from random weights (``random_weights``: None follows
        ``self.random_weights``)."""
        marked = random_weights if random_weights is not None else self.random_weights
        top = banner_height(self.image_size[0]) if marked else 0
        vis = draw_seg(image, self.labels, alpha=alpha, legend=legend, class_names=self.class_names, top=top, **kwargs)
        return finish(vis, self, marked)


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
