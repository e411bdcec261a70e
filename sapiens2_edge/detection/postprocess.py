"""The detector's post-processing, torch-free (numpy, float32 like the reference).

1. :func:`decode_detections` (mmdet ``predict_by_feat`` with the person config): per level, sigmoid
   scores, keep scores > 0.05, the top 1000 of them, decode (left, top, right, bottom) distances
   around the level's point priors (x = column * stride, y = row * stride), clamp to the 640 x 640
   input (mmdet's ``img_shape`` after Pad, so a box may reach into the padding beyond the image,
   as in the reference), scale back to the original image, drop boxes without positive width and height, sort all
   by score and keep 100. No NMS here.
2. :func:`select_people` (the demo): label 0 and score > 0.3, greedy NMS at IoU 0.3 with "+1" areas
   (a box is kept when its IoU with every kept box is <= the threshold), and the whole image
   (0, 0, W-1, H-1) when nothing survives.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from ..errors import InvalidTensorError
from .config import BBOX_THR, MAX_PER_IMG, MIN_BBOX_SIZE, NMS_PRE, NMS_THR, PERSON_LABEL, SCORE_THR
from .preprocess import Letterbox


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


__all__ = ["Detections", "point_priors", "decode_detections", "nms_plus_one", "whole_image", "select_people"]
