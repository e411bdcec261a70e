"""Person detectors for the top-down pose path, torch-free: what ``Predictor(..., detector=...)``
accepts besides the torch RTMDet (opened through :mod:`.torch_backend`).

* :class:`FixedBoxes`: the same boxes for every image (a fixed camera, a test).
* :class:`OnnxDetector`: an exported detector run by onnxruntime, decoded in one of two output
  conventions: ``rtmdet`` (the raw head: per level class logits (1, C, H, W) then box distances
  (1, 4, H, W), as ``torch.onnx.export`` writes :class:`~sapiens2_edge.detection.RTMDet`) or
  ``yolox`` (YOLOX's (1, N, 5 + C) rows).
* :func:`detect`: any detector (a callable image -> ``Detections`` or ``(boxes, scores)``) run on
  one image, its answer checked (NaN or inverted boxes raise ``InvalidBoxError``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import BackendUnavailableError, CheckpointNotFoundError, ConfigError, InvalidTensorError
from ..tasks.detection_processing import (
    BBOX_THR,
    INPUT_SIZE,
    NMS_THR,
    Detections,
    check_detections,
    decode_detections,
    decode_yolox,
    prepare_input,
    select_people,
)

CONVENTIONS = ("rtmdet", "yolox")
STRIDES = (8, 16, 32)


class FixedBoxes:
    """A detector that returns the same person boxes ``(N, 4)`` [x1, y1, x2, y2] (optionally scores
    ``(N,)``, default 1) for every image."""

    def __init__(self, boxes: Any, scores: Any = None) -> None:
        b = np.asarray(boxes, dtype=np.float32)
        b = b.reshape(0, 4) if b.size == 0 else (b[None] if b.ndim == 1 else b)
        s = np.ones(len(b), np.float32) if scores is None else np.asarray(scores, dtype=np.float32)
        self.detections = check_detections(Detections(b, s), (0, 0), "FixedBoxes")
        self.calls = 0

    def __call__(self, image: Any) -> Detections:
        self.calls += 1
        return self.detections

    def __repr__(self) -> str:
        return f"FixedBoxes({len(self.detections.boxes)} boxes)"


def detect(detector: Callable[[np.ndarray], Any], image: np.ndarray) -> Detections:
    """Run ``detector`` on one RGB image; its answer (``Detections``, a ``(boxes, scores)`` pair or
    an (N, 4) / (N, 5) array) checked and returned as ``Detections``."""
    found = detector(image)
    name = f"the detector {type(detector).__name__}"
    if isinstance(found, tuple) and len(found) == 2:
        return check_detections(found, image.shape[:2], name)
    try:
        arr = np.asarray(found, dtype=np.float32)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.ndim == 2 and arr.shape[1] in (4, 5):
        scores = arr[:, 4] if arr.shape[1] == 5 else np.ones(len(arr), np.float32)
        return check_detections(Detections(arr[:, :4], scores), image.shape[:2], name)
    raise ConfigError(f"{name} returned {type(found).__name__} {np.shape(arr)}; expected "
                      "Detections(boxes (N, 4), scores (N,)), a (boxes, scores) pair or an (N, 4) / (N, 5) array")


class OnnxDetector:
    """An exported person detector run by onnxruntime (see the module docstring for ``convention``).

    ``input_size`` (H, W) defaults to the model's static input shape, else 640 x 640; ``bbox_thr``,
    ``nms_thr`` and ``fallback_whole_image`` are the demo's person filtering (as
    :class:`~sapiens2_edge.detection.RTMDetPersonDetector`); ``decoded`` (yolox) says the rows
    already hold centre and size in input pixels. RTMDet inputs are mean/std-normalised BGR, YOLOX
    inputs raw BGR in [0, 255].
    """

    def __init__(self, path: str | os.PathLike, convention: str = "rtmdet", *, input_size: tuple[int, int] | None = None,
                 bbox_thr: float = BBOX_THR, nms_thr: float = NMS_THR, fallback_whole_image: bool = True,
                 decoded: bool = False, providers: list[str] | None = None) -> None:
        if convention not in CONVENTIONS:
            raise ConfigError(f"unknown detector output convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointNotFoundError(f"no ONNX detector at {self.path}; expected an .onnx file")
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError("OnnxDetector needs onnxruntime: pip install onnxruntime") from None
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            raise ConfigError(f"cannot open the ONNX detector {self.path}: {e}") from None
        shape = self.session.get_inputs()[0].shape
        static = len(shape) == 4 and all(isinstance(v, int) for v in shape[2:])
        self.input_size = tuple(input_size) if input_size is not None else (tuple(shape[2:]) if static else INPUT_SIZE)
        self.convention, self.decoded = convention, bool(decoded)
        self.bbox_thr, self.nms_thr, self.fallback_whole_image = float(bbox_thr), float(nms_thr), bool(fallback_whole_image)

    def raw(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The detector's decoded output for one RGB image (boxes, scores, labels), before the
        demo's person filtering."""
        x, box = prepare_input(image, self.input_size, normalize=self.convention == "rtmdet")
        outs = self.session.run(None, {self.session.get_inputs()[0].name: x[None]})
        if self.convention == "yolox":
            rows = outs[0]
            if rows.ndim != 3 or rows.shape[0] != 1:
                raise InvalidTensorError(f"a YOLOX detector must output (1, N, 5 + classes), got shape {rows.shape}")
            return decode_yolox(rows[0], box, STRIDES, decoded=self.decoded)
        if len(outs) != 2 * len(STRIDES):
            raise InvalidTensorError(f"an RTMDet detector must output {len(STRIDES)} class maps then {len(STRIDES)} "
                                     f"box maps, got {len(outs)} outputs")
        levels = len(STRIDES)
        return decode_detections([o[0] for o in outs[:levels]], [o[0] for o in outs[levels:]], STRIDES, box)

    def __call__(self, image: np.ndarray) -> Detections:
        return select_people(*self.raw(image), image.shape[:2], self.bbox_thr, self.nms_thr, self.fallback_whole_image)

    def __repr__(self) -> str:
        return f"OnnxDetector({self.path.name!r}, convention={self.convention!r})"


__all__ = ["CONVENTIONS", "FixedBoxes", "OnnxDetector", "detect"]
