"""Streams: a synthetic video (moving coloured rectangles as people, written with OpenCV) through
the Predictor with a fake detector; tracking, detection cadence, dropped frames on a live source,
One-Euro smoothing against hand-computed values, and bad input."""

from __future__ import annotations

import math
import time

import cv2
import numpy as np
import pytest

import sapiens2_edge as s2e
from sapiens2_edge.errors import ConfigError, ImageNotFoundError, InvalidImageError
from sapiens2_edge.runtime.detectors import FixedBoxes
from sapiens2_edge.runtime.tracking import IoUTracker, OneEuro, OneEuroFilter, iou_matrix
from tests.fixtures.tiny import INPUT, tiny_model

W, H, N_FRAMES = 320, 240, 18
COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))  # RGB: one "person" per colour


def person_boxes(t: int) -> np.ndarray:
    """Where the three rectangles are in frame ``t`` (x1, y1, x2, y2), moving 3 px per frame."""
    return np.array([[10 + 3 * t, 40, 70 + 3 * t, 200], [130, 20 + 2 * t, 180, 170 + 2 * t],
                     [290 - 3 * t, 60, 318 - 3 * t, 220]], dtype=np.float32)


def frame_at(t: int) -> np.ndarray:
    frame = np.full((H, W, 3), 30, np.uint8)
    for (x1, y1, x2, y2), color in zip(person_boxes(t).astype(int), COLORS, strict=True):
        frame[y1:y2, x1:x2] = color
    return frame


def write_video(path, frames) -> str:
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    assert out.isOpened()
    for f in frames:
        out.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    out.release()
    return str(path)


class RectangleDetector:
    """Finds the coloured rectangles (a channel > 180 and the others < 90); calls counted."""

    def __init__(self):
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        boxes = []
        for c in range(3):
            others = [o for o in range(3) if o != c]
            mask = (image[..., c] > 180) & (image[..., others[0]] < 90) & (image[..., others[1]] < 90)
            ys, xs = np.nonzero(mask)
            if len(xs) > 50:
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        boxes = np.array(boxes, np.float32).reshape(-1, 4)
        return boxes, np.ones(len(boxes), np.float32)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "people.avi", [frame_at(t) for t in range(N_FRAMES)])


@pytest.fixture(scope="module")
def pose_model():
    return tiny_model("pose")


def test_track_ids_stay_with_their_people(video, pose_model):
    det = RectangleDetector()
    pred = s2e.Predictor(pose_model, input_size=INPUT, detector=det)
    stream = pred.stream(video, detect_every=1)
    results = list(stream)
    assert stream.frames == stream.results == len(results) == N_FRAMES and stream.expected_frames == N_FRAMES
    assert not stream.truncated and stream.dropped == 0 and det.calls == N_FRAMES
    for t, r in enumerate(results):
        assert r.frame_index == t and len(r) == 3 and r.latency_s > 0 and r.fps > 0
        # MJPG blurs the edges by a pixel or two; the ids follow the colours (0 red, 1 green, 2 blue)
        np.testing.assert_allclose(r.boxes, person_boxes(t), atol=3)
        assert list(r.track_ids) == [0, 1, 2]


def test_detector_runs_every_n_frames_and_boxes_follow_keypoints_between(video, pose_model):
    det = RectangleDetector()
    pred = s2e.Predictor(pose_model, input_size=INPUT, detector=det)
    stream = pred.stream(video, detect_every=4, kpt_thr=-math.inf)  # random model: take every keypoint
    results = list(stream)
    assert det.calls == stream.detections == math.ceil(N_FRAMES / 4) == 5
    for r in results:
        assert len(r.track_ids) == len(r)
        if r.frame_index % 4:  # boxes from the previous frame's keypoints, padded by 10 %
            prev = results[r.frame_index - 1]
            assert len(r) == len(prev)
            for box, kps in zip(r.boxes, prev.keypoints, strict=True):
                x1, y1 = kps.min(axis=0)
                x2, y2 = kps.max(axis=0)
                pad = 0.1 * np.array([x2 - x1, y2 - y1])
                want = np.array([x1 - pad[0], y1 - pad[1], x2 + pad[0], y2 + pad[1]])
                want[[0, 2]] = np.clip(want[[0, 2]], 0, W - 1)
                want[[1, 3]] = np.clip(want[[1, 3]], 0, H - 1)
                np.testing.assert_allclose(box, want, atol=1e-3)


def test_live_source_drops_stale_frames_and_counts_them(pose_model):
    pred = s2e.Predictor(pose_model, input_size=INPUT, detector=FixedBoxes(person_boxes(0)))
    frames = [frame_at(t) for t in range(40)]
    stream = pred.stream((f for f in frames), live=True, max_queue=2)
    seen = []
    for r in stream:
        seen.append(r.frame_index)
        time.sleep(0.02)  # a slow consumer
    assert stream.frames == 40 and stream.dropped > 0
    assert stream.results + stream.dropped == 40 == len(seen) + stream.dropped
    assert seen == sorted(set(seen)) and seen[-1] == 39  # in order, the newest frame never dropped
    calm = pred.stream(iter(frames), max_queue=2)  # not live: nothing dropped
    assert [r.frame_index for r in calm] == list(range(40)) and calm.dropped == 0


def test_dense_tasks_stream_without_detector():
    pred = s2e.Predictor(tiny_model("seg"), input_size=INPUT)
    results = list(pred.stream([frame_at(t) for t in range(3)]))
    assert [r.frame_index for r in results] == [0, 1, 2]
    assert all(r.track_ids is None and r.labels.shape == (H, W) for r in results)


def test_bad_sources(tmp_path, video, pose_model):
    pred = s2e.Predictor(pose_model, input_size=INPUT, detector=RectangleDetector())
    with pytest.raises(ImageNotFoundError, match="no video file at .*missing.avi"):
        pred.stream(tmp_path / "missing.avi")
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(InvalidImageError, match="OpenCV cannot open .*junk.avi as a video"):
        pred.stream(junk)
    with pytest.raises(ConfigError, match="a video path, a camera index, a URL or an iterable .*got float"):
        pred.stream(1.5)
    with pytest.raises(ConfigError, match="detect_every must be a positive integer, got 0"):
        pred.stream(video, detect_every=0)
    with pytest.raises(ConfigError, match=r"smooth must be None or OneEuro\(...\), got dict"):
        pred.stream(video, smooth={})
    frames = [frame_at(0), frame_at(1), np.zeros((100, 80, 3), np.uint8)]
    got = []
    with pytest.raises(InvalidImageError, match=r"frame 2 is 80 x 100 \(W x H\), but the stream started at 320 x 240"):
        for r in pred.stream(frames):
            got.append(r.frame_index)
    assert got == [0, 1]
    with pytest.raises(InvalidImageError, match="frame 0 is float32"):
        list(pred.stream([np.zeros((4, 4, 3), np.float32)], live=True))


def test_truncated_video_stops_cleanly(tmp_path, video, pose_model):
    data = open(video, "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    pred = s2e.Predictor(pose_model, input_size=INPUT, detector=RectangleDetector())
    stream = pred.stream(cut)
    results = list(stream)
    assert 0 < stream.frames < N_FRAMES and len(results) == stream.frames
    assert stream.expected_frames == N_FRAMES and stream.truncated  # the header announced more
    assert "truncated" in repr(stream)


# --- tracking and smoothing ------------------------------------------------------------------------
def test_iou_tracker_by_hand():
    a, b, c = [0, 0, 10, 10], [20, 0, 30, 10], [50, 50, 60, 60]
    np.testing.assert_allclose(iou_matrix([a], [[5, 0, 15, 10]]), [[50 / 150]])
    tr = IoUTracker(iou_thr=0.3, max_misses=1)
    assert list(tr.update(np.array([a, b]))) == [0, 1]
    assert list(tr.update(np.array([[21, 0, 31, 10], [1, 0, 11, 10]]))) == [1, 0]  # order does not matter
    assert list(tr.update(np.array([c]))) == [2]  # both others miss once (kept)
    assert list(tr.update(np.array([c, a]))) == [2, 0]  # track 1 misses twice -> dropped
    assert tr.live_ids == {0, 2}
    assert list(tr.update(np.array([b]))) == [3]  # ids are never reused
    with pytest.raises(ConfigError, match="max_misses must be a non-negative integer, got -1"):
        IoUTracker(max_misses=-1)


def test_one_euro_by_hand():
    # freq 10 Hz: dt = 0.1 s. alpha(fc) = 1 / (1 + 1 / (2 pi fc dt)); alpha(1) = 1 / (1 + 1.591549) = 0.385870
    f = OneEuroFilter(OneEuro(min_cutoff=1.0, beta=0.0, d_cutoff=1.0, freq=10.0))
    out = [float(f(np.array([x]), i)[0]) for i, x in enumerate([0.0, 1.0, 1.0])]
    np.testing.assert_allclose(out, [0.0, 0.385870, 0.385870 + 0.385870 * (1 - 0.385870)], atol=1e-6)
    # beta 1: speed (1 - 0) / 0.1 = 10, smoothed 0.385870 * 10 = 3.85870, cutoff 4.85870,
    # alpha = 1 / (1 + 1 / (2 pi 4.85870 0.1)) = 1 / (1 + 1 / 3.052811) = 1 / 1.327567 = 0.753257
    g = OneEuroFilter(OneEuro(min_cutoff=1.0, beta=1.0, d_cutoff=1.0, freq=10.0))
    g(np.array([0.0]), 0)
    np.testing.assert_allclose(g(np.array([1.0]), 1), [0.753257], atol=2e-6)
    with pytest.raises(ConfigError, match="OneEuro min_cutoff must be a positive number, got 0"):
        OneEuro(min_cutoff=0)


def test_smoothing_in_a_stream_damps_jitter(video, pose_model):
    det = RectangleDetector()
    raw = list(s2e.Predictor(pose_model, input_size=INPUT, detector=det).stream(video))
    smooth = list(s2e.Predictor(pose_model, input_size=INPUT, detector=RectangleDetector()).stream(
        video, smooth=OneEuro(min_cutoff=0.5, freq=10.0)))
    np.testing.assert_allclose(smooth[0].keypoints, raw[0].keypoints)  # the first frame passes through
    ref = OneEuroFilter(OneEuro(min_cutoff=0.5, freq=10.0))  # track 0 filtered by hand
    for r, s in zip(raw, smooth, strict=True):
        want = ref(r.keypoints[list(r.track_ids).index(0)], r.frame_index)
        np.testing.assert_allclose(s.keypoints[list(s.track_ids).index(0)], want, atol=1e-3)


# --- writing ---------------------------------------------------------------------------------------
def count_frames(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_annotated_video_and_jsonl(tmp_path, video, pose_model):
    import json

    from sapiens2_edge.runtime.video import write_stream

    pred = s2e.Predictor(pose_model, input_size=INPUT, detector=RectangleDetector())
    out, lines = tmp_path / "out.avi", tmp_path / "out.jsonl"
    done = write_stream(pred.stream(video, detect_every=2), out, lines)
    assert done == {"frames": N_FRAMES, "written": N_FRAMES, "dropped": 0, "truncated": False}
    assert count_frames(out) == N_FRAMES
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["frame_index"] for r in records] == list(range(N_FRAMES))
    first = records[0]["instances"]
    assert [i["track_id"] for i in first] == [0, 1, 2]
    assert len(first[0]["keypoints"]) == 308 and len(first[0]["keypoint_scores"]) == 308 and len(first[0]["bbox"]) == 4
    np.testing.assert_allclose([i["bbox"] for i in first], person_boxes(0), atol=3)
    drawn = cv2.VideoCapture(str(out)).read()[1]
    assert drawn.shape == (H, W, 3) and not np.array_equal(drawn, cv2.cvtColor(frame_at(0), cv2.COLOR_RGB2BGR))


def test_writing_dense_and_truncated_streams(tmp_path, video):
    import json

    from sapiens2_edge.runtime.video import write_stream

    data = open(video, "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    pred = s2e.Predictor(tiny_model("seg"), input_size=INPUT)
    done = write_stream(pred.stream(cut), tmp_path / "seg.avi", tmp_path / "seg.jsonl")
    assert done["truncated"] and done["written"] == done["frames"] < N_FRAMES
    assert count_frames(tmp_path / "seg.avi") == done["frames"]
    records = [json.loads(line) for line in (tmp_path / "seg.jsonl").read_text().splitlines()]
    assert len(records) == done["frames"] and records[0]["task"] == "seg"
    with pytest.raises(ConfigError, match="expected a suffix among .avi, .mp4, .mkv"):
        write_stream(pred.stream(video), tmp_path / "out.gif")
    with pytest.raises(ConfigError, match="needs a video path, a .jsonl path or both"):
        write_stream(pred.stream(video), None)
