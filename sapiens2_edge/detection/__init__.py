"""The person detector of the top-down pose path (spec 2.1): RTMDet-m, clean-room, in the official
checkpoint layout, with the demo's pre- and post-processing.

* :func:`rtmdet_m` builds the network (random weights), :func:`load_detector` loads it from
  safetensors, :func:`convert_checkpoint` turns the official ``.pth`` into safetensors once.
* :class:`RTMDetPersonDetector` runs image -> person boxes; :class:`PersonDetector` is the protocol.
* the pre/post-processing is numpy + OpenCV (:mod:`sapiens2_edge.tasks.detection_processing`);
  torch is imported only by the names that need it (resolved lazily here).
"""

from __future__ import annotations

import importlib
from typing import Any

from ..tasks.detection_processing import (
    Detections,
    Letterbox,
    decode_detections,
    letterbox_geometry,
    nms_plus_one,
    prepare_input,
    select_people,
    whole_image,
)

_LAZY = {
    "RTMDet": "model", "rtmdet_m": "model", "RTMDetConfig": "config",
    "load_detector": "checkpoint", "convert_checkpoint": "checkpoint",
    "PersonDetector": "detector", "RTMDetPersonDetector": "detector",
}

__all__ = ["Detections", "decode_detections", "nms_plus_one", "select_people", "whole_image", "Letterbox",
           "letterbox_geometry", "prepare_input", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sapiens2_edge.detection' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
