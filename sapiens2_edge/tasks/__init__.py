"""Pre- and post-processing for every Sapiens2 task (numpy + OpenCV only, no torch).

>>> pipe = get_pipeline("seg", input_size=(1024, 768))
>>> batch, meta = pipe.preprocess(image)          # (n, 3, H, W) float32, normalised
>>> result = pipe.postprocess(infer(batch), meta)  # SegResult
>>> results = pipe([image1, image2], infer)        # both steps over a list of images
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..spec import DEFAULT_INPUT_SIZE, TASKS
from .base import Pipeline
from .dense import AlbedoPipeline, NormalPipeline, PointmapPipeline
from .image import MAX_PIXELS, MAX_SIDE, load_image
from .keypoints import (
    COCO17_FROM_308,
    COCO17_NAMES,
    FLIP_INDICES,
    KEYPOINT_GROUPS,
    KEYPOINT_NAMES,
    NUM_KEYPOINTS,
    SKELETON,
    to_coco17,
)
from .pose import PosePipeline, decode_heatmaps, pose_demo_json
from .preprocess import MEAN, MEAN_RGB, STD, STD_RGB, Letterbox
from .results import AlbedoResult, NormalResult, PointmapResult, PoseResult, SegResult
from .seg import SEG_CLASSES, SEG_FLIP_PAIRS, SEG_PALETTE, SegPipeline

_PIPELINES: dict[str, type[Pipeline]] = {
    "pose": PosePipeline,
    "seg": SegPipeline,
    "normal": NormalPipeline,
    "pointmap": PointmapPipeline,
    "albedo": AlbedoPipeline,
}


def get_pipeline(task: str, input_size: tuple[int, int] = DEFAULT_INPUT_SIZE, **options: Any) -> Pipeline:
    """The pipeline of ``task`` for a network input of ``input_size`` = (H, W).

    Options: pose takes ``flip_test`` (True), ``bbox_padding`` (1.25) and ``blur_kernel_size``
    (11); the other tasks take none.
    """
    if task not in _PIPELINES:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return _PIPELINES[task](input_size, **options)


__all__ = [
    "TASKS", "get_pipeline", "Pipeline", "load_image", "MAX_SIDE", "MAX_PIXELS",
    "MEAN", "STD", "MEAN_RGB", "STD_RGB", "DEFAULT_INPUT_SIZE", "Letterbox",
    "PoseResult", "SegResult", "NormalResult", "PointmapResult", "AlbedoResult",
    "PosePipeline", "SegPipeline", "NormalPipeline", "PointmapPipeline", "AlbedoPipeline",
    "decode_heatmaps", "pose_demo_json",
    "KEYPOINT_NAMES", "NUM_KEYPOINTS", "KEYPOINT_GROUPS", "FLIP_INDICES", "SKELETON",
    "COCO17_NAMES", "COCO17_FROM_308", "to_coco17",
    "SEG_CLASSES", "SEG_PALETTE", "SEG_FLIP_PAIRS",
]
