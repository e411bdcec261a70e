"""Writing a stream: an annotated video (one drawn frame per input frame) and a ``.jsonl`` file with
one JSON line per frame (pose: the demo's instance format plus each instance's ``track_id``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import ConfigError

CODECS = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "MJPG"}
"""Video container (by suffix) -> the FourCC OpenCV writes it with."""


def frame_record(result: Any) -> dict[str, Any]:
    """One frame's JSON line: ``frame_index``, ``latency_s`` and, for pose, ``instances`` (bbox,
    keypoints, keypoint_scores, track_id); dense tasks write their summary (``to_dict``)."""
    record: dict[str, Any] = {"frame_index": int(result.frame_index), "latency_s": round(float(result.latency_s), 6)}
    if result.task == "pose":
        instances = result.instances()
        ids = result.track_ids if result.track_ids is not None else [None] * len(instances)
        for instance, tid in zip(instances, ids, strict=True):
            instance["track_id"] = None if tid is None else int(tid)
        record.update(task="pose", image_size=[int(v) for v in result.image_size], instances=instances)
    else:
        record.update(result.to_dict())
    return record


def draw_frame(frame: np.ndarray, result: Any, kpt_thr: float = 0.3) -> np.ndarray:
    """The result drawn over its frame (RGB), with each person's track id above their box."""
    canvas = result.draw(frame, kpt_thr=kpt_thr) if result.task == "pose" else result.draw(frame)
    if result.task == "pose" and result.track_ids is not None:
        canvas = np.ascontiguousarray(canvas)
        for box, tid in zip(result.boxes, result.track_ids, strict=True):
            x, y = int(box[0]), max(int(box[1]) - 4, 12)
            cv2.putText(canvas, f"id {int(tid)}", (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
    return canvas


def write_stream(stream: Any, video_path: str | os.PathLike | None, jsonl_path: str | os.PathLike | None = None,
                 fps: float | None = None, kpt_thr: float = 0.3) -> dict[str, Any]:
    """Run ``stream`` (from ``Predictor.stream``) to its end, writing the annotated video (codec by
    suffix, see :data:`CODECS`; frame rate ``fps``, else the source's, else 30) and / or the
    ``.jsonl``. Returns the counts: ``frames`` (read), ``written``, ``dropped``, ``truncated``."""
    if video_path is None and jsonl_path is None:
        stream.close()
        raise ConfigError("write_stream needs a video path, a .jsonl path or both")
    if video_path is not None and Path(video_path).suffix.lower() not in CODECS:
        stream.close()
        raise ConfigError(f"cannot write video {video_path}: expected a suffix among {', '.join(CODECS)}")
    rate = float(fps or stream.source.rate or 30.0)
    stream.keep_frames = video_path is not None
    writer = None
    written = 0
    lines = open(jsonl_path, "w") if jsonl_path is not None else None  # noqa: SIM115 - closed below
    try:
        for result in stream:
            if lines is not None:
                lines.write(json.dumps(frame_record(result)) + "\n")
            if video_path is not None:
                canvas = cv2.cvtColor(draw_frame(result.frame, result, kpt_thr), cv2.COLOR_RGB2BGR)
                if writer is None:
                    size = (canvas.shape[1], canvas.shape[0])
                    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*CODECS[Path(video_path).suffix.lower()]),
                                             rate, size)
                    if not writer.isOpened():
                        raise ConfigError(f"OpenCV cannot write the video {video_path} ({size[0]} x {size[1]} at {rate:g} "
                                          "fps); check the folder exists and the codec is available")
                writer.write(canvas)
                result.frame = None  # the frame is no longer needed
            written += 1
    finally:
        if writer is not None:
            writer.release()
        if lines is not None:
            lines.close()
    return {"frames": stream.frames, "written": written, "dropped": stream.dropped, "truncated": stream.truncated}


__all__ = ["CODECS", "draw_frame", "frame_record", "write_stream"]
