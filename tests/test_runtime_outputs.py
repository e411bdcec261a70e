"""Predicting over image files and writing the outputs (runtime.inputs / runtime.outputs), torch-free."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from sapiens2_edge.errors import ConfigError, InvalidBoxError
from sapiens2_edge.runtime.inputs import list_images, load_boxes, split_images
from sapiens2_edge.runtime.outputs import run_predictions, write_outputs
from sapiens2_edge.tasks import PoseResult, SegResult, get_pipeline

ROOT = Path(__file__).resolve().parents[1]


class FakePredictor:
    """A predictor whose network returns constant raw outputs (the pipelines are the real ones)."""

    def __init__(self, task: str, size=(32, 24)):
        self.task, self.pipeline = task, get_pipeline(task, size, **({"flip_test": False} if task == "pose" else {}))
        self.boxes_seen = []

    def __call__(self, image, boxes=None):
        self.boxes_seen.append(boxes)
        h, w = self.pipeline.input_size

        def infer(batch):
            if self.task == "pose":
                hm = np.zeros((len(batch), 308, h // 4, w // 4), np.float32)
                hm[:, :, 2, 3] = 1.0
                return (hm,)
            return (np.zeros((len(batch), 29, h // 4, w // 4), np.float32),)

        return self.pipeline([image], infer, boxes=[boxes])[0]


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("b.png", (40, 30, 3)), ("a.jpg", (20, 50, 3))):
        cv2.imwrite(str(d / name), rng.integers(0, 256, shape, dtype=np.uint8))
    (d / "notes.txt").write_text("not an image")
    return d


def test_list_images_folder_file_and_errors(folder, tmp_path):
    assert [p.name for p in list_images(folder)] == ["a.jpg", "b.png"]
    assert list_images(folder / "b.png") == [folder / "b.png"]
    with pytest.raises(ConfigError, match="does not exist; expected an image file or a folder"):
        list_images(tmp_path / "missing.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no images \(.jpg"):
        list_images(tmp_path / "empty")


def test_load_boxes_forms_and_errors(tmp_path):
    f = tmp_path / "boxes.json"
    assert load_boxes(None, ["a.jpg"]) == {}
    f.write_text("[[0, 0, 5, 5]]")
    assert load_boxes(f, ["a.jpg"]) == {"a.jpg": [[0, 0, 5, 5]]}
    with pytest.raises(InvalidBoxError, match="plain list of boxes, but there are 2 images"):
        load_boxes(f, ["a.jpg", "b.png"])
    f.write_text('{"c.jpg": []}')
    with pytest.raises(InvalidBoxError, match=r"boxes for images that are not inputs: \['c.jpg'\]"):
        load_boxes(f, ["a.jpg"])
    f.write_text("3")
    with pytest.raises(InvalidBoxError, match="must hold a JSON object mapping image names"):
        load_boxes(f, ["a.jpg"])
    f.write_text("{not json")
    with pytest.raises(InvalidBoxError, match="cannot read boxes file"):
        load_boxes(f, ["a.jpg"])


def test_split_images_held_out_sources(folder):
    calib, held, src = split_images(folder, None, 1, 4)
    assert [p.name for p in calib] == ["a.jpg"] and [p.name for p in held] == ["b.png"] and "not used" in src
    calib, held, src = split_images(folder, None, 2, 4)
    assert held == calib and "no held-out images were left" in src
    calib, held, src = split_images(folder, folder / "b.png", 2, 4)
    assert [p.name for p in held] == ["b.png"] and src == str(folder / "b.png")


def test_write_outputs_files(tmp_path):
    image = np.zeros((6, 4, 3), np.uint8)
    result = SegResult(labels=np.ones((6, 4), np.uint8))
    files = write_outputs(result, image, tmp_path, "x")
    assert [f.name for f in files] == ["x.png", "x_labels.npy", "x.json"]
    assert cv2.imread(str(tmp_path / "x.png")).shape == (6, 4, 3)
    np.testing.assert_array_equal(np.load(tmp_path / "x_labels.npy"), result.labels)
    assert json.loads((tmp_path / "x.json").read_text())["task"] == "seg"


def test_run_predictions_pose_writes_keypoints_json(folder, tmp_path):
    pred = FakePredictor("pose")
    seen = []
    results = run_predictions(pred, list_images(folder), tmp_path / "out", {"a.jpg": [[1, 1, 20, 15]]},
                              progress=lambda items: seen.extend(items) or items)
    assert [p.name for p in seen] == ["a.jpg", "b.png"] and all(isinstance(r, PoseResult) for r in results)
    assert pred.boxes_seen == [[[1, 1, 20, 15]], None]
    frames = json.loads((tmp_path / "out" / "keypoints.json").read_text())
    assert [f["image_name"] for f in frames["frames"]] == ["a.jpg", "b.png"]
    assert (tmp_path / "out" / "b_keypoints.npy").exists() and (tmp_path / "out" / "a.png").exists()


def test_run_predictions_refuses_boxes_for_other_tasks(folder, tmp_path):
    with pytest.raises(InvalidBoxError, match="boxes are only used by pose models; this is a seg model"):
        run_predictions(FakePredictor("seg"), list_images(folder), tmp_path, {"a.jpg": [[0, 0, 5, 5]]})
    results = run_predictions(FakePredictor("seg"), list_images(folder), tmp_path / "seg")
    assert [r.labels.shape for r in results] == [(20, 50), (40, 30)]
    assert not (tmp_path / "seg" / "keypoints.json").exists()


def test_prediction_outputs_need_no_torch():
    code = ("import sys, sapiens2_edge.runtime.outputs, sapiens2_edge.runtime.inputs; "
            "assert 'torch' not in sys.modules, 'runtime outputs imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
