"""Streams: a video file, a camera, a URL or any iterable of RGB frames through a :class:`Predictor`,
one result per frame (``Predictor.stream(...)``).

Pose: the person detector runs every ``detect_every`` frames; between detections each person's
box is the bounding box of their confident keypoints in the previous frame, padded. Boxes get
track ids by greedy IoU matching (:mod:`.tracking`), keypoints optional One-Euro smoothing per
track. Each result carries ``frame_index``, ``track_ids`` (pose; None for dense tasks),
``latency_s`` (frame read -> result) and ``fps`` (results per second so far).

A live source (camera, URL, or ``live=True``) is read by a thread into a queue of ``max_queue``
frames; when the consumer falls behind, the oldest frame is dropped rather than lagging, and
counted (``stream.dropped``). A file is read in step with the consumer, nothing dropped. A file
that does not open raises; a truncated file stops cleanly (``stream.truncated``, frames counted);
a frame whose size differs from the first raises ``InvalidImageError``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import cv2
import numpy as np

from ..errors import ConfigError, ImageNotFoundError, InvalidImageError
from .detectors import detect
from .tracking import IoUTracker, OneEuro, OneEuroFilter

_END = object()


def _check_frame(frame: Any, index: int, size: tuple[int, int] | None) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise InvalidImageError(f"frame {index} is {got}; expected an RGB uint8 array (H, W, 3)")
    if size is not None and frame.shape[:2] != size:
        raise InvalidImageError(f"frame {index} is {frame.shape[1]} x {frame.shape[0]} (W x H), but the stream started "
                                f"at {size[1]} x {size[0]}; a stream's frames must keep one size")
    return frame


class FrameSource:
    """Frames of a video file / camera / URL (OpenCV) or an iterable of RGB arrays."""

    def __init__(self, source: Any, live: bool | None = None) -> None:
        self.capture = None
        self.expected: int | None = None
        self.rate: float | None = None
        if isinstance(source, (int, np.integer)) and not isinstance(source, bool):
            self.capture, kind, self.name = cv2.VideoCapture(int(source)), "camera", f"camera {int(source)}"
        elif isinstance(source, (str, os.PathLike)):
            text = str(source)
            if "://" in text:
                kind, self.name = "url", text
            else:
                kind, self.name = "file", text
                if not Path(text).is_file():
                    raise ImageNotFoundError(f"no video file at {text}; expected a video file, a camera index or a URL")
            self.capture = cv2.VideoCapture(text)
        elif isinstance(source, Iterable) and not isinstance(source, (bytes, np.ndarray)):
            self.frames, kind, self.name = iter(source), "iterable", type(source).__name__
        else:
            raise ConfigError(f"a stream source must be a video path, a camera index, a URL or an iterable of RGB "
                              f"frames, got {type(source).__name__}")
        if self.capture is not None:
            if not self.capture.isOpened():
                self.capture.release()
                raise InvalidImageError(f"OpenCV cannot open {self.name} as a video; expected a readable video file, "
                                        "camera or stream URL")
            count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            self.expected = count if kind == "file" and count > 0 else None
            self.rate = float(self.capture.get(cv2.CAP_PROP_FPS) or 0) or None
        self.live = kind in ("camera", "url") if live is None else bool(live)

    def read(self) -> np.ndarray | None:
        """The next RGB frame, or None at the end (or when the video cannot be decoded further)."""
        if self.capture is None:
            return next(self.frames, None)
        ok, bgr = self.capture.read()
        if not ok or bgr is None:
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()


def _padded_keypoint_box(kps: np.ndarray, scores: np.ndarray, thr: float, pad: float, size: tuple[int, int],
                         ) -> np.ndarray | None:
    good = kps[scores > thr]
    if len(good) < 2:
        return None
    x1, y1 = good.min(axis=0)
    x2, y2 = good.max(axis=0)
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    box = np.array([x1 - pad * w, y1 - pad * h, x2 + pad * w, y2 + pad * h], np.float32)
    box[[0, 2]] = np.clip(box[[0, 2]], 0, size[1] - 1)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, size[0] - 1)
    return box if box[2] > box[0] and box[3] > box[1] else None


class Stream:
    """Iterate for one result per frame; ``frames`` (read), ``results``, ``dropped``, ``detections``
    (detector runs), ``expected_frames`` (a file's header count) and ``truncated`` are counted."""

    def __init__(self, predictor: Any, source: Any, *, detect_every: int = 1, smooth: OneEuro | None = None,
                 max_queue: int = 4, live: bool | None = None, tracker: IoUTracker | None = None,
                 kpt_thr: float = 0.3, box_padding: float = 0.1) -> None:
        for name, value in (("detect_every", detect_every), ("max_queue", max_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if smooth is not None and not isinstance(smooth, OneEuro):
            raise ConfigError(f"smooth must be None or OneEuro(...), got {type(smooth).__name__}")
        self.pred, self.detect_every, self.smooth, self.max_queue = predictor, detect_every, smooth, max_queue
        self.tracker = tracker or IoUTracker()
        self.kpt_thr, self.box_padding = float(kpt_thr), float(box_padding)
        self.source = FrameSource(source, live)
        self.expected_frames = self.source.expected
        self.frames = self.results = self.dropped = self.detections = 0
        self.filters: dict[int, OneEuroFilter] = {}
        self.keep_frames = False  # True: each result carries its RGB frame as ``result.frame`` (for drawing)
        self._prev: tuple[np.ndarray, np.ndarray] | None = None  # last frame's keypoints and scores

    @property
    def truncated(self) -> bool:
        """A file stopped before the frame count its header announced."""
        return self.expected_frames is not None and self.frames < self.expected_frames

    # -- reading ---------------------------------------------------------------------------------
    def _frames(self) -> Iterator[tuple[int, float, np.ndarray]]:
        if not self.source.live:
            while (frame := self.source.read()) is not None:
                self.frames += 1
                yield self.frames - 1, time.perf_counter(), frame
            return
        q: queue.Queue = queue.Queue(maxsize=self.max_queue)
        stop = threading.Event()
        failure: list[BaseException] = []

        def reader() -> None:
            try:
                while not stop.is_set() and (frame := self.source.read()) is not None:
                    item = (self.frames, time.perf_counter(), frame)
                    self.frames += 1
                    try:
                        q.put_nowait(item)
                    except queue.Full:  # the consumer is behind: drop the stalest frame, keep the new one
                        try:
                            q.get_nowait()
                            self.dropped += 1
                        except queue.Empty:
                            pass
                        q.put_nowait(item)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                failure.append(e)
            finally:
                while not stop.is_set():
                    try:
                        q.put(_END, timeout=0.1)
                        break
                    except queue.Full:
                        continue

        thread = threading.Thread(target=reader, name="sapiens2-edge-stream", daemon=True)
        thread.start()
        try:
            while (item := q.get()) is not _END:
                yield item
            if failure:
                raise failure[0]
        finally:
            stop.set()
            thread.join(timeout=5)

    # -- per frame -------------------------------------------------------------------------------
    def _boxes(self, frame: np.ndarray, index: int) -> np.ndarray | None:
        if self.pred.detector is None:
            return None
        if index % self.detect_every == 0 or self._prev is None:
            self.detections += 1
            return detect(self.pred.detector, frame).boxes
        kps, scores = self._prev
        boxes = [b for k, s in zip(kps, scores, strict=True)
                 if (b := _padded_keypoint_box(k, s, self.kpt_thr, self.box_padding, frame.shape[:2])) is not None]
        return np.array(boxes, np.float32).reshape(-1, 4)

    def _pose(self, frame: np.ndarray, index: int):
        boxes = self._boxes(frame, index)
        result = self.pred(frame, boxes=boxes) if boxes is None or len(boxes) else self.pred.empty_pose(frame)
        ids = self.tracker.update(result.boxes)
        if self.smooth is not None:
            for i, tid in enumerate(ids):
                f = self.filters.setdefault(int(tid), OneEuroFilter(self.smooth))
                result.keypoints[i] = f(result.keypoints[i], index).astype(np.float32)
            for tid in set(self.filters) - self.tracker.live_ids:
                del self.filters[tid]
        self._prev = (result.keypoints, result.scores)
        result.track_ids = ids
        return result

    def __iter__(self) -> Iterator[Any]:
        size = None
        start = time.perf_counter()
        try:
            for index, read_at, frame in self._frames():
                frame = _check_frame(frame, index, size)
                size = frame.shape[:2]
                if self.pred.task == "pose":
                    result = self._pose(frame, index)
                else:
                    result = self.pred(frame)
                    result.track_ids = None
                self.results += 1
                now = time.perf_counter()
                result.frame_index, result.latency_s = index, now - read_at
                result.fps = self.results / max(now - start, 1e-9)
                if self.keep_frames:
                    result.frame = frame
                yield result
        finally:
            self.source.close()

    def close(self) -> None:
        """Release the video source (done at the end of iteration)."""
        self.source.close()

    def __repr__(self) -> str:
        return (f"Stream({self.source.name!r}: {self.frames} frames read, {self.results} results, {self.dropped} "
                f"dropped, {self.detections} detector runs{', truncated' if self.truncated else ''})")


__all__ = ["FrameSource", "Stream"]
