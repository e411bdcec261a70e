"""The detector's pre/post-processing against hand-computed values, and the person detector end to
end on small networks whose outputs are set by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sapiens2_edge.detection import (
    Letterbox,
    decode_detections,
    letterbox_geometry,
    nms_plus_one,
    prepare_input,
    select_people,
)
from sapiens2_edge.detection.config import RTMDetConfig
from sapiens2_edge.detection.detector import PersonDetector, RTMDetPersonDetector
from sapiens2_edge.detection.model import RTMDet, rtmdet_m
from sapiens2_edge.errors import ConfigError, InvalidImageError, InvalidTensorError
from sapiens2_edge.models.safetensors_io import write_tensors


# --- pre-processing ----------------------------------------------------------------------------
@pytest.mark.parametrize("size, resized", [
    ((480, 640), (480, 640)),      # s = min(640/640, 640/480) = 1
    ((1080, 1920), (360, 640)),    # s = 1/3
    ((1000, 333), (640, 213)),     # s = 0.64; 333 * 0.64 = 213.12
    ((5, 1280), (3, 640)),         # s = 0.5; 2.5 rounds half up to 3 (mmcv), not to even
    ((2, 4), (320, 640)),          # upscaling: s = 160
])
def test_keep_ratio_geometry(size, resized):
    box = letterbox_geometry(size)
    assert box.resized_size == resized
    assert box.scale == (resized[1] / size[1], resized[0] / size[0])


def test_boxes_round_trip_between_image_and_input():
    box = letterbox_geometry((1000, 333))
    image_boxes = np.array([[10, 20, 300, 990], [0, 0, 332, 999]], dtype=np.float32)
    on_input = box.to_input(image_boxes)
    np.testing.assert_allclose(on_input[0], [10 * 213 / 333, 20 * 0.64, 300 * 213 / 333, 990 * 0.64], rtol=1e-6)
    np.testing.assert_allclose(box.to_image(on_input), image_boxes, rtol=1e-6)


def test_prepare_input_pads_with_114_and_normalises_bgr():
    image = np.empty((2, 4, 3), np.uint8)
    image[:] = (10, 20, 30)  # RGB
    x, box = prepare_input(image)
    assert x.shape == (3, 640, 640) and x.dtype == np.float32 and box.resized_size == (320, 640)
    # channel 0 is blue: (30 - 103.53) / 57.375; below the image, the padding (114 - mean) / std
    np.testing.assert_allclose(x[:, 0, 0], [(30 - 103.53) / 57.375, (20 - 116.28) / 57.12,
                                           (10 - 123.675) / 58.395], rtol=1e-6)
    np.testing.assert_allclose(x[:, 319, 639], x[:, 0, 0])
    np.testing.assert_allclose(x[:, 320, 0], [(114 - 103.53) / 57.375, (114 - 116.28) / 57.12,
                                             (114 - 123.675) / 58.395], rtol=1e-6)


def test_prepare_input_refuses_non_rgb_arrays():
    with pytest.raises(InvalidImageError, match=r"RGB uint8 image of shape \(H, W, 3\), got float32"):
        prepare_input(np.zeros((4, 4, 3), np.float32))


# --- decoding ----------------------------------------------------------------------------------
def _maps(fill: float = -10.0):
    """Level maps for a 64 x 64 input: strides 8, 16, 32 -> 8x8, 4x4, 2x2."""
    cls = [np.full((1, n, n), fill, np.float32) for n in (8, 4, 2)]
    reg = [np.zeros((4, n, n), np.float32) for n in (8, 4, 2)]
    return cls, reg


def _sig(x: float) -> float:
    return 1 / (1 + np.exp(-x))


def test_decode_hand_built_maps():
    cls, reg = _maps()
    cls[0][0, 2, 3] = 2.0                  # prior (x, y) = (3 * 8, 2 * 8) = (24, 16)
    reg[0][:, 2, 3] = (4, 6, 10, 12)       # -> (20, 10, 34, 28)
    cls[2][0, 1, 0] = 0.0                  # prior (0, 32)
    reg[2][:, 1, 0] = (5, 40, 20, 8)       # -> (-5, -8, 20, 40), clamped to (0, 0, 20, 40)
    cls[1][0, 3, 3] = 3.0                  # prior (48, 48)
    reg[1][:, 3, 3] = (1, 1, 30, 30)       # -> (47, 47, 78, 78), clamped to the 64 x 64 input
    cls[1][0, 0, 0] = 1.0                  # prior (0, 0): (-3, -3, 0, 3) -> zero width once clamped: dropped
    reg[1][:, 0, 0] = (3, 3, 0, 3)
    box = Letterbox(image_size=(128, 128), resized_size=(64, 64), scale=(0.5, 0.5), input_size=(64, 64))
    boxes, scores, labels = decode_detections(cls, reg, (8, 16, 32), box)
    np.testing.assert_allclose(scores, [_sig(3.0), _sig(2.0), _sig(0.0)], rtol=1e-6)
    np.testing.assert_allclose(boxes, [[94, 94, 128, 128], [40, 20, 68, 56], [0, 0, 40, 80]], rtol=1e-6)
    assert labels.tolist() == [0, 0, 0] and boxes.dtype == np.float32


def test_decode_keeps_scores_above_0_05_top_1000_per_level_and_100_in_all():
    cls, reg = _maps()
    cls[0][0, 0, :5] = [1.0, 2.0, 3.0, 4.0, 5.0]
    cls[1][0, 0, 0] = np.log(0.05 / 0.95) - 1e-3  # just below the 0.05 threshold
    reg[0][:] = 1.0
    box = Letterbox((64, 64), (64, 64), (1.0, 1.0), (64, 64))
    boxes, scores, _ = decode_detections(cls, reg, (8, 16, 32), box, nms_pre=3)
    np.testing.assert_allclose(scores, [_sig(5.0), _sig(4.0), _sig(3.0)], rtol=1e-6)
    np.testing.assert_allclose(boxes[:, 0], [31, 23, 15])  # priors x = 32, 24, 16 minus 1
    assert len(decode_detections(cls, reg, (8, 16, 32), box, max_per_img=2)[0]) == 2
    with pytest.raises(InvalidTensorError, match="one class map and one box map per stride"):
        decode_detections(cls[:2], reg, (8, 16, 32), box)


# --- the demo's NMS and selection ----------------------------------------------------------------
def test_nms_uses_plus_one_areas_and_keeps_iou_equal_to_the_threshold():
    boxes = np.array([[0, 0, 9, 9],     # area (9+1) * (9+1) = 100
                      [5, 0, 14, 9],    # overlap 5 * 10 = 50 -> IoU 50 / 150 = 1/3 > 0.3 (without +1: 36/126 < 0.3)
                      [6, 0, 15, 9],    # overlap 4 * 10 = 40 -> IoU 40 / 160 = 0.25
                      [0, 0, 5, 4]],    # inside the first, area 6 * 5 = 30 -> IoU exactly 0.3: kept
                     dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert nms_plus_one(boxes, scores, 0.3) == [0, 2, 3]
    assert nms_plus_one(boxes[:0], scores[:0], 0.3) == []


def test_select_people_thresholds_labels_and_whole_image_fallback():
    boxes = np.array([[0, 0, 9, 9], [20, 20, 29, 29], [40, 40, 49, 49]], np.float32)
    people = select_people(boxes, np.array([0.9, 0.3, 0.8], np.float32), np.array([0, 0, 1]), (100, 200))
    np.testing.assert_array_equal(people.boxes, boxes[:1])  # 0.3 is not > 0.3; label 1 is not a person
    np.testing.assert_array_equal(people.scores, np.float32([0.9]))
    none = select_people(boxes, np.array([0.1, 0.2, 0.3], np.float32), np.zeros(3), (100, 200))
    np.testing.assert_array_equal(none.boxes, [[0, 0, 199, 99]])
    np.testing.assert_array_equal(none.scores, [0.0])
    empty = select_people(boxes, np.zeros(3, np.float32), np.zeros(3), (100, 200), fallback=False)
    assert empty.boxes.shape == (0, 4) and empty.scores.shape == (0,)


# --- the detector end to end --------------------------------------------------------------------
TINY = RTMDetConfig(widen_factor=0.125, deepen_factor=0.33, neck_in_channels=(32, 64, 128), neck_out_channels=16,
                    feat_channels=16)


def _set_head(model: RTMDet, cls_bias: float, reg_bias: float) -> RTMDet:
    with torch.no_grad():
        for conv in (*model.bbox_head.rtm_cls, *model.bbox_head.rtm_reg):
            conv.weight.zero_()
        for conv in model.bbox_head.rtm_cls:
            conv.bias.fill_(cls_bias)
        for conv in model.bbox_head.rtm_reg:
            conv.bias.fill_(reg_bias)
    return model


def _iou_plus_one(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = iw * ih
    return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)


def test_detector_without_people_returns_the_whole_image():
    det = RTMDetPersonDetector(_set_head(RTMDet(TINY).eval(), -20.0, 1.0))
    assert isinstance(det, PersonDetector)
    image = np.random.default_rng(0).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    people = det(image)
    np.testing.assert_array_equal(people.boxes, [[0, 0, 159, 89]])
    np.testing.assert_array_equal(people.scores, [0.0])
    assert len(det.raw([image])[0][0]) == 0


def test_detector_boxes_follow_the_head_and_batches_match_single_images():
    # every prior scores sigmoid(0) = 0.5 and predicts a square of half-side 2 * stride around itself
    det = RTMDetPersonDetector(_set_head(RTMDet(TINY).eval(), 0.0, 2.0), batch_size=2)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (120, 200, 3), dtype=np.uint8), rng.integers(0, 255, (300, 100, 3), dtype=np.uint8),
              rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)]
    raw = det.raw(images[:1])[0]
    assert len(raw[0]) == 100 and np.allclose(raw[1], 0.5)  # at most 100 from the detector
    batched = det(images)
    for image, people in zip(images, batched, strict=True):
        alone = det(image)
        np.testing.assert_allclose(people.boxes, alone.boxes, atol=1e-4)
        assert len(people.boxes) >= 1 and np.allclose(people.scores, 0.5, atol=1e-6)
        # clamped to the padded 640 x 640 input (mmdet's img_shape after Pad), so a box may reach into
        # the padding beyond the image, but no further
        w_scale, h_scale = letterbox_geometry(image.shape[:2]).scale
        assert (people.boxes[:, [0, 1]] >= 0).all() and (people.boxes[:, 2] <= 640 / w_scale + 1e-3).all() \
            and (people.boxes[:, 3] <= 640 / h_scale + 1e-3).all()
        for i in range(len(people.boxes)):
            for j in range(i):
                assert _iou_plus_one(people.boxes[i], people.boxes[j]) <= 0.3 + 1e-6


def test_detector_from_a_safetensors_file(tmp_path):
    path = write_tensors(rtmdet_m(seed=0).state_dict(), tmp_path / "rtmdet_m.safetensors")
    det = RTMDetPersonDetector(path)
    people = det(np.full((48, 64, 3), 128, np.uint8))
    assert people.boxes.dtype == np.float32 and people.boxes.shape[1] == 4 and len(people.scores) == len(people.boxes)


def test_detector_option_errors():
    model = RTMDet(TINY)
    with pytest.raises(ConfigError, match=r"bbox_thr must be a number in \[0, 1\], got 1.5"):
        RTMDetPersonDetector(model, bbox_thr=1.5)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer, got 0"):
        RTMDetPersonDetector(model, batch_size=0)
    with pytest.raises(ConfigError, match="an RTMDet model or a safetensors path, got int"):
        RTMDetPersonDetector(3)
    with pytest.raises(InvalidImageError, match="uint8"):
        RTMDetPersonDetector(model)(np.zeros((8, 8, 3), np.float32))


def test_pre_and_post_processing_need_no_torch():
    import subprocess
    import sys

    code = ("import sys; from sapiens2_edge.detection import prepare_input, decode_detections, select_people; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
