"""Predictor on tiny fixtures: agreement with model + pipeline run by hand, batching, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sapiens2_edge as s2e
from sapiens2_edge.errors import ConfigError, InvalidBoxError, InvalidImageError, TaskMismatchError
from sapiens2_edge.tasks import get_pipeline
from tests.fixtures.tiny import INPUT, save, tiny_model

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (150, 110, 3), dtype=np.uint8)


def test_matches_pipeline_and_model_by_hand():
    model = tiny_model("seg")
    pred = s2e.Predictor(model, backend="torch", device="cpu", input_size=INPUT)
    pipe = get_pipeline("seg", input_size=INPUT)
    batch, meta = pipe.preprocess(IMAGE)
    with torch.no_grad():
        logits = model(torch.from_numpy(batch)).numpy()
    expected = pipe.postprocess((logits,), meta)
    got = pred(IMAGE)
    assert got.labels.shape == IMAGE.shape[:2]
    np.testing.assert_array_equal(got.labels, expected.labels)
    assert pred.backend == "torch" and pred.task == "seg"


def test_list_runs_as_batch_with_same_results():
    pred = s2e.Predictor(tiny_model("normal"), input_size=INPUT)
    other = RNG.integers(0, 256, (90, 200, 3), dtype=np.uint8)
    calls = []
    runner = pred.runner
    pred.runner = lambda b: calls.append(len(b)) or runner(b)
    both = pred([IMAGE, other])
    assert calls == [2]  # one backend call for the whole list
    pred.runner = runner
    for img, res in zip([IMAGE, other], both, strict=True):
        np.testing.assert_allclose(res.normal, pred(img).normal, rtol=1e-3, atol=2e-4)


def test_pose_boxes_and_flip_test():
    model = tiny_model("pose")
    pred = s2e.Predictor(model, input_size=INPUT)
    boxes = np.array([[10, 20, 60, 120], [50, 10, 100, 140]], dtype=np.float32)
    res = pred(IMAGE, boxes=boxes)
    assert res.keypoints.shape == (2, 308, 2) and res.scores.shape == (2, 308)
    np.testing.assert_allclose(res.boxes, boxes)
    whole = pred(IMAGE)
    assert whole.keypoints.shape == (1, 308, 2)
    no_flip = s2e.Predictor(model, input_size=INPUT, flip_test=False)(IMAGE)
    assert not np.allclose(no_flip.scores, whole.scores)  # the flip pass really contributes
    with pytest.raises(InvalidBoxError, match="degenerate|x2 <= x1|x2"):
        pred(IMAGE, boxes=np.array([[50, 20, 40, 120]]))


def test_from_path_and_task_check(tmp_path):
    path = save(tiny_model("albedo"), tmp_path / "albedo.safetensors")
    pred = s2e.Predictor(str(path), input_size=INPUT)
    assert pred.task == "albedo"
    out = pred(IMAGE).albedo
    assert out.shape == (150, 110, 3) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(TaskMismatchError, match="albedo checkpoint, but task='seg'"):
        s2e.Predictor(str(path), task="seg")
    with pytest.raises(TaskMismatchError, match="is a albedo model, but task='pose'|albedo model, but task='pose'"):
        s2e.Predictor(tiny_model("albedo"), task="pose")


def test_errors():
    with pytest.raises(ConfigError, match="pretrain .*backbone-only"):
        s2e.Predictor(tiny_model())
    with pytest.raises(ConfigError, match="unknown backend 'tensorflow'"):
        s2e.Predictor(tiny_model("seg"), backend="tensorflow")
    with pytest.raises(ConfigError, match="'onnxruntime' runs exported artifacts"):
        s2e.Predictor(tiny_model("seg"), backend="onnxruntime")
    with pytest.raises(ConfigError, match="invalid device 'gpu0'"):
        s2e.Predictor(tiny_model("seg"), device="gpu0")
    with pytest.raises(ConfigError, match="expected an artifact directory, a Sapiens2Model, a checkpoint path"):
        s2e.Predictor(42)
    pred = s2e.Predictor(tiny_model("seg"), input_size=INPUT)
    with pytest.raises(InvalidImageError, match="uint8"):
        pred(IMAGE.astype(np.float32))
    with pytest.raises(InvalidBoxError):
        pred([IMAGE, IMAGE], boxes=[None])


def test_auto_device_selection():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert s2e.Predictor(tiny_model("seg"), input_size=INPUT).runner.device.startswith(expected)


def test_missing_image_is_a_file_not_found_error(tmp_path):
    from sapiens2_edge.errors import ImageNotFoundError

    pred = s2e.Predictor(tiny_model("seg"), input_size=INPUT)
    with pytest.raises(FileNotFoundError, match="image file not found"):
        pred(str(tmp_path / "nope.jpg"))
    assert issubclass(ImageNotFoundError, InvalidImageError)
