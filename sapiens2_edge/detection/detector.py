"""The person detector interface and the official RTMDet-m implementation of it.

``PersonDetector`` is what the top-down pose path needs: an RGB image in, person boxes and scores
out. ``RTMDetPersonDetector`` runs the whole official chain: pre-processing, the
network (torch), the detector's decoding and the demo's filtering (both in ``tasks/detection_processing.py``).
"""

from __future__ import annotations

import os
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from ..errors import ConfigError
from ..tasks.detection_processing import Detections, decode_detections, prepare_input, select_people
from ..tasks.image import load_image
from .config import BBOX_THR, NMS_THR
from .model import RTMDet


@runtime_checkable
class PersonDetector(Protocol):
    """Finds people: ``detector(image_rgb) -> Detections(boxes (N, 4) float32 xyxy, scores (N,))``;
    a list of images gives a list of Detections."""

    def __call__(self, images: Any) -> Detections | list[Detections]: ...


def _check_threshold(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


class RTMDetPersonDetector:
    """The official demo's person detector.

    model_or_path: an :class:`RTMDet` (e.g. ``rtmdet_m()`` or ``load_detector(...)``) or a path to
    its safetensors file. ``bbox_thr`` / ``nms_thr`` are the demo's ``--bbox-thr`` / ``--nms-thr``;
    ``fallback_whole_image`` returns the whole image (score 0) for an image without people, as the
    demo does. ``batch_size`` bounds how many images go through the network at once.
    """

    def __init__(self, model_or_path: RTMDet | str | os.PathLike, device: str | torch.device = "cpu",
                 bbox_thr: float = BBOX_THR, nms_thr: float = NMS_THR, fallback_whole_image: bool = True,
                 batch_size: int = 8) -> None:
        if isinstance(model_or_path, RTMDet):
            model = model_or_path.to(device).eval()
        elif isinstance(model_or_path, (str, os.PathLike)):
            from .checkpoint import load_detector

            model = load_detector(model_or_path, device=device)
        else:
            raise ConfigError(f"model_or_path must be an RTMDet model or a safetensors path, got "
                              f"{type(model_or_path).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = model
        self.bbox_thr = _check_threshold("bbox_thr", bbox_thr)
        self.nms_thr = _check_threshold("nms_thr", nms_thr)
        self.fallback_whole_image = bool(fallback_whole_image)
        self.batch_size = batch_size

    def _run(self, images: Sequence[Any]) -> list[tuple[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        arrays = [load_image(im) for im in images]
        param = next(self.model.parameters())
        out = []
        for start in range(0, len(arrays), self.batch_size):
            chunk = arrays[start:start + self.batch_size]
            prepared = [prepare_input(a) for a in chunk]
            batch = torch.from_numpy(np.stack([x for x, _ in prepared])).to(param.device, param.dtype)
            with torch.inference_mode():
                cls_scores, bbox_preds = self.model(batch)
            cls_np = [c.float().cpu().numpy() for c in cls_scores]
            reg_np = [r.float().cpu().numpy() for r in bbox_preds]
            for i, (image, (_, box)) in enumerate(zip(chunk, prepared, strict=True)):
                found = decode_detections([c[i] for c in cls_np], [r[i] for r in reg_np], self.model.cfg.strides, box)
                out.append((image.shape[:2], found))
        return out

    def raw(self, images: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The detector's own output per image (boxes, scores, labels; at most 100, sorted by
        score), before the demo's filtering."""
        return [found for _, found in self._run(list(images))]

    def __call__(self, images: Any) -> Detections | list[Detections]:
        """One image (path, PIL image or RGB array) -> Detections; a list or tuple -> a list."""
        single = not isinstance(images, (list, tuple))
        runs = self._run([images] if single else list(images))
        people = [select_people(*found, size, self.bbox_thr, self.nms_thr, self.fallback_whole_image)
                  for size, found in runs]
        return people[0] if single else people


__all__ = ["PersonDetector", "RTMDetPersonDetector"]
