"""``Predictor``: image(s) in, typed task results out, through whichever backend runs the model."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from ..artifact import is_artifact, looks_like_artifact
from ..errors import ConfigError, InputSizeError, TaskMismatchError
from ..spec import DETECTION_TASK
from ..tasks import get_pipeline
from ..tasks.image import load_image
from ..tasks.pose import MAX_BOXES
from .detectors import ArtifactDetector, bundled_detector, detect
from .opener import BACKENDS, open_artifact

log = logging.getLogger("sapiens2_edge")

def check_precision_target(model: Any, precision: str | None) -> None:
    """``precision=`` chooses how torch runs a checkpoint: refused, before any work, for an artifact."""
    if precision is not None and (is_artifact(model) or looks_like_artifact(model)):
        raise ConfigError(f"precision={precision!r} chooses how torch runs a checkpoint; an artifact runs at the "
                          "precision it was exported for (export --scheme bf16, for one): drop precision=")


class Predictor:
    """Run a Sapiens2 task model on images.

    ``model``: an exported artifact directory (run by the best installed runtime), a loaded
    :class:`~sapiens2_edge.models.model.Sapiens2Model`, or anything :func:`sapiens2_edge.load_model`
    accepts (a ``.safetensors`` path, a directory, a Hugging Face id), run by torch.
    ``pred(image, boxes=None)`` takes an RGB uint8 array, a PIL image or a path and returns one
    result; a list of images runs as one batch and returns a list. ``boxes`` (pose only) are person
    boxes ``(n, 4)`` as ``x1, y1, x2, y2`` in image pixels; for a list, one entry per image. At most
    ``max_boxes`` boxes per image are accepted (default 100; more raise an ``InvalidBoxError`` naming
    the limit); their crops run in chunks of the backend's batch limit (at most 16 crops per call),
    so memory stays flat however many boxes there are.
    ``pred.backend`` and ``pred.backend_reason`` say what runs the model and why.

    ``detector`` (pose): finds the people when no ``boxes`` are given: a callable image ->
    ``Detections(boxes, scores)`` / ``(boxes, scores)`` (e.g. :class:`~.detectors.FixedBoxes`,
    :class:`~.detectors.OnnxDetector`), the directory of an exported detector artifact (any backend,
    :class:`~.detectors.ArtifactDetector`) or the path of the RTMDet-m safetensors file (run by torch).
    All of an image's people then run as one batch of crops. ``None``: the detector the pose
    artifact carries (``export(..., detector=DIR)``), else pose runs on the whole image (announced
    once with a log warning); ``False``: no detector even when the artifact carries one.
    ``pred.stream(...)`` runs a video or camera (see :mod:`.stream`).

    ``keypoints`` (pose): decode only these: ``"coco17"`` or a list of keypoint names / indices of
    the 308 set (results then hold them in that order); decoding costs in proportion, and each
    equals the full decoding's value exactly. None: all 308.

    ``precision`` (a checkpoint run by torch): ``"fp32"`` (default, the reference numerics), ``"bf16"``
    (bf16 autocast; 1.8x faster at 0.4b 1024x768 on an AVX-512 BF16 CPU, seg label agreement ~97 % on
    random weights; refused where the CPU does not compute bf16 natively) or ``"auto"`` (bf16 where it
    is native, else fp32). An artifact runs at the precision it was exported for.
    """

    def __init__(self, model: Any, backend: str = "auto", *, task: str | None = None, device: str = "auto",
                 input_size: Sequence[int] | None = None, flip_test: bool = True, batch_size: int | None = None,
                 max_boxes: int = MAX_BOXES, detector: Any = None, keypoints: Any = None, precision: str | None = None):
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        check_precision_target(model, precision)
        if is_artifact(model) or looks_like_artifact(model):  # the latter: refused, it lacks its manifest
            self._open_artifact(model, backend, device, input_size, batch_size)
        else:
            self._open_checkpoint(model, backend, device, input_size, batch_size, task, precision)
        if self.task is None:
            raise ConfigError("this is a pretrain (backbone-only) model: the Predictor needs a task checkpoint "
                              "(pose, seg, normal, pointmap or albedo); call the model directly for features")
        if task is not None and task != self.task:
            raise TaskMismatchError(f"the model is a {self.task} model, but task={task!r} was asked for")
        if keypoints is not None and self.task != "pose":
            raise ConfigError(f"keypoints= chooses pose keypoints to decode; this is a {self.task} model")
        options = {"flip_test": flip_test, "max_boxes": max_boxes, "keypoints": keypoints} if self.task == "pose" else {}
        self.pipeline = get_pipeline(self.task, input_size=self.input_size, **options)
        log.info("sapiens2_edge: backend %s (%s): %s", self.backend, self.backend_reason, self.runner.describe())
        self.detector = self._open_detector(detector, device)

    def _open_detector(self, detector: Any, device: str) -> Any:
        if detector is None and self.manifest is not None and "detector" in self.manifest.options:
            return ArtifactDetector(bundled_detector(self.root, self.manifest), device=device)
        if detector is False:
            detector = None
        if detector is not None and self.task != "pose":
            raise ConfigError(f"a person detector only serves pose models; this is a {self.task} model (drop detector=)")
        if detector is None:
            if self.task == "pose":
                log.warning("sapiens2_edge: no person detector: pose runs on the whole image (one person); pass "
                            "detector=PATH (RTMDet-m safetensors) or a detector object for several people")
            return None
        if isinstance(detector, (str, os.PathLike)) and os.path.isdir(detector):
            return ArtifactDetector(detector, device=device)
        if isinstance(detector, (str, os.PathLike)):
            from .torch_backend import open_detector

            return open_detector(detector, device=device)
        if not callable(detector):
            raise ConfigError(f"detector must be a callable image -> Detections, a detector checkpoint path or None, "
                              f"got {type(detector).__name__}")
        return detector

    def _open_artifact(self, root, backend, device, input_size, batch_size) -> None:
        self.manifest, self.runner, self.backend_reason = open_artifact(root, backend, device, batch_size)
        self.backend = self.runner.name
        self.model, self.root = None, Path(root)
        self.task = self.manifest.task
        if self.task == DETECTION_TASK:
            raise TaskMismatchError(f"{root} is a person detector artifact, not a Sapiens2 task model: pass it as "
                                    "detector= of a pose Predictor (s2e.Predictor(pose_dir, detector=DIR))")
        self.input_size = tuple(self.manifest.input_size)
        if input_size is not None and tuple(input_size) != self.input_size:
            raise InputSizeError(f"the artifact {root} was exported for {self.input_size[0]}x{self.input_size[1]} "
                                 f"inputs, got input_size={tuple(input_size)}; re-export it for that size")
        self.max_batch = self.manifest.max_batch
        self.random_weights = bool(self.manifest.options.get("random_weights", False))

    def _open_checkpoint(self, model, backend, device, input_size, batch_size, task, precision) -> None:
        if backend not in ("auto", "torch"):
            raise ConfigError(f"backend {backend!r} runs exported artifacts; export the checkpoint first "
                              "(s2e.export / sapiens2-edge export) or use backend='torch'")
        from .torch_backend import open_checkpoint

        self.runner = open_checkpoint(model, task=task, device=device, batch_size=batch_size,
                                      precision=precision or "fp32")
        self.model, self.manifest, self.root = self.runner.model, None, None
        self.task = self.model.task
        self.input_size = tuple(input_size) if input_size is not None else self.model.input_size
        self.backend = self.runner.name
        self.backend_reason = "asked for" if backend == "torch" else "auto: a checkpoint runs on torch"
        if precision is not None:
            self.backend_reason += f"; {self.runner.precision}: {self.runner.precision_reason}"
        self.max_batch = batch_size
        self.random_weights = not getattr(self.model, "pretrained", True)

    def stream(self, source: Any, detect_every: int = 1, smooth: Any = None, max_queue: int = 4, **options: Any):
        """One result per frame of a video file, camera index, URL or iterable of RGB frames (pose:
        detection every ``detect_every`` frames, tracking, optional ``OneEuro`` smoothing; see
        :class:`~.stream.Stream` for the options and counters)."""
        from .stream import Stream

        return Stream(self, source, detect_every=detect_every, smooth=smooth, max_queue=max_queue, **options)

    def empty_pose(self, image: Any):
        """A pose result with no people for ``image`` (a frame where nobody was found)."""
        return self.pipeline.postprocess((), {"num_instances": 0, "image_size": load_image(image).shape[:2]})

    def __repr__(self) -> str:
        return f"Predictor(task={self.task!r}, backend={self.backend!r}, input_size={self.input_size})"

    def __call__(self, images: Any, boxes: Any = None):
        single = not isinstance(images, (list, tuple))
        if single:
            images, boxes = [images], [boxes]
        found = None
        if self.detector is not None and (boxes is None or all(b is None for b in boxes)):
            images = [load_image(im) for im in images]
            found = [detect(self.detector, im) for im in images]
            boxes = [f.boxes for f in found]
        # One backend call for the whole list, or chunks of the artifact's / the caller's batch limit.
        results = self.pipeline(images, self.runner, boxes=boxes, batch_size=self.max_batch or 1 << 30)
        for i, r in enumerate(results):
            r.random_weights = self.random_weights  # overlays then say the predictions are noise
            if found is not None:
                r.detection_scores = found[i].scores  # the detector's score of each instance
        return results[0] if single else results

