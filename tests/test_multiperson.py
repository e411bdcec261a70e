"""Multi-person pose: the Predictor's person detector (FixedBoxes, any callable, an RTMDet-m file,
an ONNX detector in the RTMDet and YOLOX conventions) and its error paths."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import sapiens2_edge as s2e
from sapiens2_edge.detection.config import RTMDetConfig
from sapiens2_edge.detection.detector import RTMDetPersonDetector
from sapiens2_edge.detection.model import RTMDet, rtmdet_m
from sapiens2_edge.errors import CheckpointNotFoundError, ConfigError, InvalidBoxError, InvalidTensorError
from sapiens2_edge.models.safetensors_io import write_tensors
from sapiens2_edge.runtime.detectors import FixedBoxes, OnnxDetector
from sapiens2_edge.tasks.detection_processing import Detections, decode_yolox, letterbox_geometry
from tests.fixtures.tiny import INPUT, tiny_model

RNG = np.random.default_rng(1)
IMAGE = RNG.integers(0, 256, (160, 200, 3), dtype=np.uint8)
THREE = np.array([[5, 10, 60, 150], [70, 5, 130, 140], [140, 20, 195, 155]], dtype=np.float32)


@pytest.fixture(scope="module")
def pose_model():
    return tiny_model("pose")


class CountingDetector:
    """A fake detector: fixed people per call, calls counted."""

    def __init__(self, boxes, scores=None):
        self.boxes, self.calls = np.asarray(boxes, np.float32), 0
        self.scores = np.linspace(0.9, 0.5, len(self.boxes)).astype(np.float32) if scores is None else scores

    def __call__(self, image):
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
        self.calls += 1
        return self.boxes, self.scores


def test_three_people_give_three_instances_in_one_batch(pose_model):
    det = CountingDetector(THREE)
    pred = s2e.Predictor(pose_model, input_size=INPUT, detector=det)
    sizes = []
    runner = pred.runner
    pred.runner = lambda b: sizes.append(len(b)) or runner(b)
    res = pred(IMAGE)
    assert det.calls == 1 and sizes == [6]  # three crops and their mirrors, one network call
    assert len(res) == 3 and res.keypoints.shape == (3, 308, 2)
    np.testing.assert_array_equal(res.boxes, THREE)
    np.testing.assert_array_equal(res.detection_scores, det.scores)
    pred.runner = runner
    by_hand = pred(IMAGE, boxes=THREE)  # explicit boxes bypass the detector
    assert det.calls == 1
    np.testing.assert_allclose(res.keypoints, by_hand.keypoints, atol=1e-4)
    np.testing.assert_allclose(res.scores, by_hand.scores, atol=1e-5)


def test_fixed_boxes_and_lists_of_images(pose_model):
    fixed = FixedBoxes(THREE[:2])
    pred = s2e.Predictor(pose_model, input_size=INPUT, detector=fixed)
    both = pred([IMAGE, IMAGE[:, ::-1].copy()])
    assert fixed.calls == 2 and [len(r) for r in both] == [2, 2]
    np.testing.assert_array_equal(both[1].boxes, THREE[:2])
    with pytest.raises(InvalidBoxError, match=r"FixedBoxes returned box 0 = \[9, 0, 3, 5\].*inverted"):
        FixedBoxes([[9, 0, 3, 5]])


def test_detector_nan_and_inverted_boxes_are_typed_errors(pose_model):
    nan = CountingDetector([[1, 2, np.nan, 40]])
    with pytest.raises(InvalidBoxError, match=r"box 0 = \[1, 2, nan, 40\].*NaN or inf; expected finite"):
        s2e.Predictor(pose_model, input_size=INPUT, detector=nan)(IMAGE)
    inverted = CountingDetector([[10, 10, 50, 50], [60, 90, 20, 100]])
    with pytest.raises(InvalidBoxError, match=r"box 1 = \[60, 90, 20, 100\], which is inverted or empty; expected "
                                              r"x2 > x1 and y2 > y1 in the 200 x 160"):
        s2e.Predictor(pose_model, input_size=INPUT, detector=inverted)(IMAGE)
    with pytest.raises(ConfigError, match="returned str .*expected Detections"):
        s2e.Predictor(pose_model, input_size=INPUT, detector=lambda im: "nobody")(IMAGE)
    with pytest.raises(ConfigError, match="a callable image -> Detections, a detector checkpoint path or None, got int"):
        s2e.Predictor(pose_model, input_size=INPUT, detector=3)
    with pytest.raises(ConfigError, match="only serves pose models; this is a seg model"):
        s2e.Predictor(tiny_model("seg"), input_size=INPUT, detector=FixedBoxes(THREE))
    with pytest.raises(CheckpointNotFoundError, match="no person detector at .*missing.safetensors"):
        s2e.Predictor(pose_model, input_size=INPUT, detector="missing.safetensors")


def test_no_detector_is_announced_once(pose_model, caplog):
    with caplog.at_level(logging.WARNING, logger="sapiens2_edge"):
        pred = s2e.Predictor(pose_model, input_size=INPUT)
        pred(IMAGE)
        pred(IMAGE)
    said = [r for r in caplog.records if "no person detector" in r.getMessage()]
    assert len(said) == 1
    assert len(pred(IMAGE)) == 1  # the whole image, one person


def test_rtmdet_file_end_to_end(pose_model, tmp_path):
    """A random RTMDet-m finds noise, so only the wiring is checked: shapes and types."""
    path = write_tensors(rtmdet_m(seed=0).state_dict(), tmp_path / "rtmdet_m.safetensors")
    pred = s2e.Predictor(pose_model, input_size=INPUT, detector=str(path), device="cpu")
    assert isinstance(pred.detector, RTMDetPersonDetector)
    res = pred(IMAGE)
    n = len(res.boxes)
    assert n >= 1 and res.keypoints.shape == (n, 308, 2) and res.boxes.dtype == np.float32
    assert res.detection_scores.shape == (n,)


# --- ONNX detectors -------------------------------------------------------------------------------
TINY_DET = RTMDetConfig(widen_factor=0.125, deepen_factor=0.33, neck_in_channels=(32, 64, 128), neck_out_channels=16,
                        feat_channels=16)


def test_onnx_rtmdet_matches_the_torch_detector(tmp_path):
    model = RTMDet(TINY_DET).eval()
    with torch.no_grad():  # per level its own score and box size, so a mix-up of outputs shows
        for level, (cls, reg) in enumerate(zip(model.bbox_head.rtm_cls, model.bbox_head.rtm_reg, strict=True)):
            cls.weight.zero_()
            reg.weight.zero_()
            cls.bias.fill_((-1.0, -3.0, 1.0)[level])
            reg.bias.fill_((1.0, 2.0, 3.0)[level])
    path = tmp_path / "det.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 640, 640),), str(path), dynamo=False, opset_version=17)
    onnx_det, torch_det = OnnxDetector(path), RTMDetPersonDetector(model)
    assert onnx_det.input_size == (640, 640)
    image = RNG.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    (b1, s1, l1), (b2, s2, l2) = onnx_det.raw(image), torch_det.raw([image])[0]
    assert len(s1) == len(s2) == 100 and np.allclose(s1[0], 1 / (1 + np.exp(-1.0)))  # the stride-32 level first
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_allclose(b1, b2, atol=1e-3)
    a, b = onnx_det(image), torch_det(image)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)


def _constant_yolox(path, rows: np.ndarray, size: int) -> None:
    """An ONNX model (1, 3, size, size) -> the fixed (1, N, 6) rows (plus 0 x the input's mean)."""
    const = helper.make_tensor("rows", TensorProto.FLOAT, rows[None].shape, rows.ravel().tolist())
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes = [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["z"]),
             helper.make_node("Add", ["rows", "z"], ["output"])]
    graph = helper.make_graph(nodes, "yolox", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(rows[None].shape))],
                              initializer=[const, zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_onnx_yolox_convention_by_hand(tmp_path):
    # 64 x 64 input: 8 x 8 + 4 x 4 + 2 x 2 = 84 anchors. Row 3 * 8 + 2 = cell (x 2, y 3) at stride 8:
    # centre ((0.5 + 2) * 8, (0.5 + 3) * 8) = (20, 28), size exp(log 4) * 8 = 32 -> input box
    # (4, 12, 36, 44); the 128 x 128 image was scaled by 0.5 -> image box (8, 24, 72, 88); score 0.9 * 0.8.
    rows = np.zeros((84, 6), np.float32)
    rows[:, 4] = 0.01
    rows[26] = [0.5, 0.5, np.log(4), np.log(4), 0.9, 0.8]
    path = tmp_path / "yolox.onnx"
    _constant_yolox(path, rows, 64)
    det = OnnxDetector(path, convention="yolox")
    found = det(np.zeros((128, 128, 3), np.uint8))
    np.testing.assert_allclose(found.boxes, [[8, 24, 72, 88]], atol=1e-4)
    np.testing.assert_allclose(found.scores, [0.72], atol=1e-6)
    decoded = rows.copy()
    decoded[26, :4] = [20, 28, 32, 32]
    boxes, scores, _ = decode_yolox(decoded, letterbox_geometry((128, 128), (64, 64)), decoded=True)
    np.testing.assert_allclose(boxes[:1], [[8, 24, 72, 88]], atol=1e-4)
    with pytest.raises(InvalidTensorError, match="has 84 anchor points, but the output has 83 rows"):
        decode_yolox(rows[:83], letterbox_geometry((128, 128), (64, 64)))


def test_onnx_detector_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown detector output convention 'ssd'; expected one of rtmdet, yolox"):
        OnnxDetector(tmp_path / "x.onnx", convention="ssd")
    with pytest.raises(CheckpointNotFoundError, match="no ONNX detector at .*x.onnx"):
        OnnxDetector(tmp_path / "x.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="cannot open the ONNX detector .*bad.onnx"):
        OnnxDetector(bad)
    rows = np.zeros((84, 6), np.float32)
    _constant_yolox(tmp_path / "y.onnx", rows, 64)
    with pytest.raises(InvalidTensorError, match="must output 3 class maps then 3 box maps, got 1 outputs"):
        OnnxDetector(tmp_path / "y.onnx", convention="rtmdet")(np.zeros((64, 64, 3), np.uint8))
    assert isinstance(FixedBoxes(THREE)(IMAGE), Detections)
