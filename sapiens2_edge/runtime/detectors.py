"""Person detectors for the top-down pose path, torch-free: what ``Predictor(..., detector=...)``
accepts besides the torch RTMDet (opened through :mod:`.torch_backend`).

* :class:`FixedBoxes`: the same boxes for every image (a fixed camera, a test).
* :class:`OnnxDetector`: an exported detector run by onnxruntime, decoded in one of two output
  conventions: ``rtmdet`` (the raw head: per level class logits (1, C, H, W) then box distances
  (1, 4, H, W), as ``torch.onnx.export`` writes :class:`~sapiens2_edge.detection.RTMDet`) or
  ``yolox`` (YOLOX's (1, N, 5 + C) rows).
* :class:`ArtifactDetector`: an exported detector artifact (``export(rtmdet, DIR)``, task
  ``"detection"``) run by any backend that opens its format, decoded as the torch detector.
* :func:`detect`: any detector (a callable image -> ``Detections`` or ``(boxes, scores)``) run on
  one image, its answer checked (NaN or inverted boxes raise ``InvalidBoxError``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import (
    ArtifactError,
    BackendUnavailableError,
    CheckpointNotFoundError,
    ConfigError,
    InvalidTensorError,
    TaskMismatchError,
)
from ..spec import DETECTION_TASK, DETECTOR_STRIDES
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
STRIDES = DETECTOR_STRIDES


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


def _check_threshold(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


class ArtifactDetector:
    """An exported person detector artifact (task ``"detection"``) as a ``PersonDetector``:
    ``detector(image) -> Detections``, a list of images -> a list (run in batches of the
    artifact's ``max_batch``). ``backend`` / ``device`` choose the runtime as for the Predictor;
    ``bbox_thr``, ``nms_thr`` and ``fallback_whole_image`` are the demo's person filtering."""

    def __init__(self, root: str | os.PathLike, backend: str = "auto", device: str = "auto", *,
                 bbox_thr: float = BBOX_THR, nms_thr: float = NMS_THR, fallback_whole_image: bool = True) -> None:
        from .opener import open_artifact

        self.root = Path(root)
        self.manifest, self.runner, self.backend_reason = open_artifact(self.root, backend, device)
        task = self.manifest.task
        if task != DETECTION_TASK:
            raise TaskMismatchError(f"{self.root} is a {task or 'backbone'} artifact, not a person detector (its "
                                    f"manifest's task is {task!r}, expected {DETECTION_TASK!r}); export the detector "
                                    "with s2e.export(rtmdet, DIR) and pass that directory")
        strides = self.manifest.arch.get("strides", list(DETECTOR_STRIDES))
        if not (isinstance(strides, list) and len(strides) * 2 == len(self.manifest.outputs)
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in strides)):
            raise ArtifactError(f"the manifest of {self.root}: arch.strides must list one positive integer per "
                                f"detector level ({len(self.manifest.outputs) // 2}), got {str(strides)[:80]}")
        self.strides = tuple(strides)
        self.input_size = tuple(self.manifest.input_size)
        self.bbox_thr, self.nms_thr = _check_threshold("bbox_thr", bbox_thr), _check_threshold("nms_thr", nms_thr)
        self.fallback_whole_image = bool(fallback_whole_image)
        self.calls = 0

    @property
    def backend(self) -> str:
        return self.runner.name

    def raw(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The detector's decoded output per RGB image (boxes, scores, labels), before the person
        filtering."""
        out = []
        step = self.manifest.max_batch
        levels = len(self.strides)
        for start in range(0, len(images), step):
            prepared = [prepare_input(im, self.input_size) for im in images[start:start + step]]
            outs = self.runner(np.stack([x for x, _ in prepared]))
            for i, (_, box) in enumerate(prepared):
                out.append(decode_detections([o[i] for o in outs[:levels]], [o[i] for o in outs[levels:]],
                                             self.strides, box))
        return out

    def __call__(self, images: Any) -> Detections | list[Detections]:
        from ..tasks.image import load_image

        single = not isinstance(images, (list, tuple))
        arrays = [load_image(im) for im in ([images] if single else images)]
        self.calls += 1
        people = [select_people(*found, im.shape[:2], self.bbox_thr, self.nms_thr, self.fallback_whole_image)
                  for im, found in zip(arrays, self.raw(arrays), strict=True)]
        return people[0] if single else people

    def __repr__(self) -> str:
        return f"ArtifactDetector({str(self.root)!r}, {self.manifest.format} {self.manifest.precision} on {self.backend})"


def bundled_detector(root: Path, manifest: Any) -> Path:
    """The detector artifact folder a pose artifact at ``root`` carries (``options["detector"]``),
    after checking that it is a folder inside the artifact whose manifest the pose manifest lists
    (so its checksums were checked with the pose artifact's)."""
    from ..artifact import MANIFEST
    from ..artifact.paths import check_relative, inside

    rel = manifest.options.get("detector")
    where = f"the manifest of {root}: options.detector"
    if not isinstance(rel, str):
        raise ArtifactError(f"{where} must name the folder of the bundled detector, got {str(rel)[:80]!r}")
    check_relative(rel, where)
    if f"{rel}/{MANIFEST}" not in manifest.files:
        raise ArtifactError(f"{where} names {rel!r}, but the manifest does not list {rel}/{MANIFEST}: the bundled "
                            "detector is not part of the artifact; re-export it with detector=DIR")
    return inside(root, rel, kind="dir")


__all__ = ["ArtifactDetector", "bundled_detector", "CONVENTIONS", "FixedBoxes", "OnnxDetector", "detect"]
