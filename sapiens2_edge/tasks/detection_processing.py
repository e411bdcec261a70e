"""The person detector's pre- and post-processing, torch-free (numpy + OpenCV, float32 like the
reference), shared by the torch detector (:mod:`sapiens2_edge.detection`) and the runtime's ONNX
detector adapters (:mod:`sapiens2_edge.runtime.detectors`).

Pre-processing (mmdet's RTMDet test pipeline): keep-ratio resize into 640 x 640 (mmcv's rescale:
scale = min(640 / long side, 640 / short side), new size rounded half up, bilinear), pad bottom /
right to 640 x 640 with 114, then (x - mean) / std on the **BGR** image (no channel swap).

Post-processing:

1. :func:`decode_detections` (mmdet ``predict_by_feat`` with the person config): per level, sigmoid
   scores, keep scores > 0.05, the top 1000 of them, decode (left, top, right, bottom) distances
   around the level's point priors (x = column * stride, y = row * stride), clamp to the 640 x 640
   input (mmdet's ``img_shape`` after Pad, so a box may reach into the padding beyond the image,
   as in the reference), scale back to the original image, drop boxes without positive width and
   height, sort all by score and keep 100. No NMS here.
2. :func:`select_people` (the demo): label 0 and score > 0.3, greedy NMS at IoU 0.3 with "+1" areas
   (a box is kept when its IoU with every kept box is <= the threshold), and the whole image
   (0, 0, W-1, H-1) when nothing survives.
3. :func:`decode_yolox` decodes the other common exported-detector convention (YOLOX's raw
   ``(N, 5 + C)`` rows) into the same (boxes, scores, labels) form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import cv2
import numpy as np

from ..errors import InvalidBoxError, InvalidImageError, InvalidTensorError
from ..spec import DETECTOR_INPUT_SIZE

#: Network input (H, W): keep-ratio resize into it, then pad (bottom / right).
INPUT_SIZE: tuple[int, int] = DETECTOR_INPUT_SIZE
PAD_VALUE = 114
#: Applied to the BGR image (mmdet's data preprocessor with bgr_to_rgb=False).
MEAN_BGR: tuple[float, float, float] = (103.53, 116.28, 123.675)
STD_BGR: tuple[float, float, float] = (57.375, 57.12, 58.395)

#: Detector test settings (the demo's person config).
NMS_PRE = 1000
SCORE_THR = 0.05
MAX_PER_IMG = 100
MIN_BBOX_SIZE = 0.0  # boxes need width and height > this (after rescaling to the original image)

#: The demo's own filtering (``--bbox-thr``, ``--nms-thr``) and the person class id.
BBOX_THR = 0.3
NMS_THR = 0.3
PERSON_LABEL = 0

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


def prepare_input(image_rgb: np.ndarray, input_size: tuple[int, int] = INPUT_SIZE, normalize: bool = True,
                  ) -> tuple[np.ndarray, Letterbox]:
    """RGB uint8 (H, W, 3) -> the normalised BGR network input (3, 640, 640) float32 and its geometry.
    ``normalize=False`` leaves the BGR values in [0, 255] (YOLOX's convention)."""
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
    x = (canvas.astype(np.float32) - _MEAN) / _STD if normalize else canvas.astype(np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)), box


class Detections(NamedTuple):
    """People in one image: boxes (N, 4) float32 [x1, y1, x2, y2] in image pixels, scores (N,)
    float32. When no person was found, the whole image is the one box and its score is 0.0 (real
    detections score above the threshold, which is >= 0)."""

    boxes: np.ndarray
    scores: np.ndarray


def point_priors(height: int, width: int, stride: int) -> np.ndarray:
    """(H * W, 2) prior points (x, y) = (column * stride, row * stride), row-major (offset 0)."""
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float32) * stride,
                         np.arange(width, dtype=np.float32) * stride, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float32)))).astype(np.float32)


def _level(cls_logits: np.ndarray, distances: np.ndarray, stride: int, nms_pre: int, score_thr: float):
    if cls_logits.ndim != 3 or distances.ndim != 3 or distances.shape[0] != 4 \
            or cls_logits.shape[1:] != distances.shape[1:]:
        raise InvalidTensorError(
            f"a detector level needs class logits (C, H, W) and distances (4, H, W) of the same H, W; "
            f"got {cls_logits.shape} and {distances.shape}")
    num_classes, h, w = cls_logits.shape
    scores = _sigmoid(cls_logits).reshape(num_classes, -1).T  # (H*W, C), prior-major like mmdet
    prior_idx, labels = np.nonzero(scores > score_thr)
    kept = scores[prior_idx, labels]
    order = np.argsort(-kept, kind="stable")[:nms_pre]
    prior_idx, labels, kept = prior_idx[order], labels[order], kept[order]
    dist = distances.reshape(4, -1).T[prior_idx].astype(np.float32)  # (n, 4) left, top, right, bottom
    pts = point_priors(h, w, stride)[prior_idx]
    boxes = np.concatenate([pts - dist[:, :2], pts + dist[:, 2:]], axis=1)
    return boxes, kept, labels


def decode_detections(cls_scores: Sequence[np.ndarray], bbox_preds: Sequence[np.ndarray], strides: Sequence[int],
                      letterbox: Letterbox, nms_pre: int = NMS_PRE, score_thr: float = SCORE_THR,
                      max_per_img: int = MAX_PER_IMG, min_bbox_size: float = MIN_BBOX_SIZE):
    """One image's head outputs (per level: logits (C, H, W), distances (4, H, W) in input pixels)
    -> (boxes (N, 4) float32 in original-image pixels, scores (N,) float32, labels (N,) int64),
    sorted by score, N <= ``max_per_img``."""
    if not (len(cls_scores) == len(bbox_preds) == len(strides)):
        raise InvalidTensorError(f"expected one class map and one box map per stride {tuple(strides)}, got "
                                 f"{len(cls_scores)} and {len(bbox_preds)}")
    parts = [_level(np.asarray(c), np.asarray(b), s, nms_pre, score_thr)
             for c, b, s in zip(cls_scores, bbox_preds, strides, strict=True)]
    boxes = np.concatenate([p[0] for p in parts]).astype(np.float32)
    scores = np.concatenate([p[1] for p in parts]).astype(np.float32)
    labels = np.concatenate([p[2] for p in parts]).astype(np.int64)
    in_h, in_w = letterbox.input_size
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, in_w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, in_h)
    boxes = letterbox.to_image(boxes)
    keep = ((boxes[:, 2] - boxes[:, 0]) > min_bbox_size) & ((boxes[:, 3] - boxes[:, 1]) > min_bbox_size)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    order = np.argsort(-scores, kind="stable")[:max_per_img]
    return boxes[order], scores[order], labels[order]


def nms_plus_one(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Greedy NMS as the demo runs it (mmpose ``nms``): areas and overlaps with the "+1 pixel"
    convention, highest score first, a box survives if its IoU with the kept box is <= ``thr``.
    Returns the kept indices, in the order they were kept."""
    boxes = np.asarray(boxes)
    if len(boxes) == 0:
        return []
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.asarray(scores).argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= thr]
    return keep


def whole_image(image_size: tuple[int, int]) -> Detections:
    """The fallback when no person was found: one box (0, 0, W-1, H-1) with score 0."""
    h, w = image_size
    return Detections(np.array([[0, 0, w - 1, h - 1]], dtype=np.float32), np.zeros(1, dtype=np.float32))


def select_people(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, image_size: tuple[int, int],
                  bbox_thr: float = BBOX_THR, nms_thr: float = NMS_THR, fallback: bool = True) -> Detections:
    """The demo's choice of person boxes from the detector output (see the module docstring).
    ``fallback=False`` returns no box instead of the whole image."""
    mask = (np.asarray(labels) == PERSON_LABEL) & (np.asarray(scores) > bbox_thr)
    boxes, scores = np.asarray(boxes, dtype=np.float32)[mask], np.asarray(scores, dtype=np.float32)[mask]
    keep = nms_plus_one(boxes, scores, nms_thr)
    if not keep:
        return whole_image(image_size) if fallback else Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    return Detections(boxes[keep], scores[keep])


def yolox_grid(input_size: tuple[int, int], strides: Sequence[int] = (8, 16, 32)) -> tuple[np.ndarray, np.ndarray]:
    """YOLOX's anchor points: (N, 2) grid cells (x = column, y = row), row-major per level, levels in
    stride order, and (N, 1) their strides."""
    h, w = input_size
    grids, steps = [], []
    for s in strides:
        cells = point_priors(h // s, w // s, 1)
        grids.append(cells)
        steps.append(np.full((len(cells), 1), s, np.float32))
    return np.concatenate(grids), np.concatenate(steps)


def decode_yolox(rows: np.ndarray, letterbox: Letterbox, strides: Sequence[int] = (8, 16, 32), decoded: bool = False,
                 score_thr: float = SCORE_THR, max_per_img: int = MAX_PER_IMG):
    """One image's YOLOX output (N, 5 + C): box (x, y, w, h), objectness, C class scores (after the
    sigmoid, as YOLOX exports them) -> (boxes (n, 4) float32 xyxy in original-image pixels, scores
    (n,) = objectness x best class score, labels (n,) int64), sorted by score, n <= ``max_per_img``.

    ``decoded=False`` (YOLOX's default export): x, y are offsets in grid cells and w, h log sizes,
    so the centre is (offset + cell) x stride and the size exp(w, h) x stride; ``decoded=True``:
    the rows already hold centre and size in network-input pixels."""
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] < 6:
        raise InvalidTensorError(f"a YOLOX output must be (N, 5 + classes) rows, got shape {rows.shape}")
    if decoded:
        centre, size = rows[:, :2], rows[:, 2:4]
    else:
        cells, steps = yolox_grid(letterbox.input_size, strides)
        if len(cells) != len(rows):
            raise InvalidTensorError(
                f"a {letterbox.input_size[0]} x {letterbox.input_size[1]} YOLOX input with strides {tuple(strides)} "
                f"has {len(cells)} anchor points, but the output has {len(rows)} rows")
        centre = (rows[:, :2] + cells) * steps
        size = np.exp(np.minimum(rows[:, 2:4], 30.0)) * steps
    labels = np.argmax(rows[:, 5:], axis=1).astype(np.int64)
    scores = rows[:, 4] * rows[np.arange(len(rows)), 5 + labels]
    keep = scores > score_thr
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)[keep]
    boxes = letterbox.to_image(boxes)
    order = np.argsort(-scores[keep], kind="stable")[:max_per_img]
    return boxes[order], scores[keep][order].astype(np.float32), labels[keep][order]


def check_detections(found: Detections, image_size: tuple[int, int], source: str = "the detector") -> Detections:
    """A detector's people for one image, checked: (N, 4) finite boxes with x2 > x1 and y2 > y1 and
    (N,) finite scores; raises :class:`~sapiens2_edge.errors.InvalidBoxError` naming the bad box."""
    boxes = np.asarray(found[0], dtype=np.float32)
    scores = np.asarray(found[1], dtype=np.float32)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (len(boxes),):
        raise InvalidBoxError(f"{source} must return boxes (N, 4) [x1, y1, x2, y2] and scores (N,), got shapes "
                              f"{boxes.shape} and {scores.shape}")
    for i, (box, score) in enumerate(zip(boxes, scores, strict=True)):
        shown = "[" + ", ".join(f"{v:g}" for v in box) + "]"
        if not (np.isfinite(box).all() and np.isfinite(score)):
            raise InvalidBoxError(f"{source} returned box {i} = {shown} with score {score:g}: NaN or inf; expected "
                                  "finite pixel coordinates and scores")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise InvalidBoxError(f"{source} returned box {i} = {shown}, which is inverted or empty; expected "
                                  f"x2 > x1 and y2 > y1 in the {image_size[1]} x {image_size[0]} (W x H) image")
    return Detections(boxes, scores)


__all__ = [
    "INPUT_SIZE", "PAD_VALUE", "MEAN_BGR", "STD_BGR", "NMS_PRE", "SCORE_THR", "MAX_PER_IMG", "MIN_BBOX_SIZE",
    "BBOX_THR", "NMS_THR", "PERSON_LABEL", "Letterbox", "letterbox_geometry", "prepare_input", "Detections",
    "point_priors", "decode_detections", "nms_plus_one", "whole_image", "select_people", "yolox_grid",
    "decode_yolox", "check_detections",
]
