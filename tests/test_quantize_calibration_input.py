"""Calibration forwards at a smaller input than the model runs at (``calibration_input_size``,
``--calib-input-size``): the calibration is the one a model calibrated at that size gets, the
held-out report and fidelity stay at the network input, the recipe records both sizes, and the
trained fixtures still meet the fidelity gates at their own size."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import pytest
import torch
from typer.testing import CliRunner

import sapiens2_edge as s2e
from sapiens2_edge.cli import app
from sapiens2_edge.errors import ConfigError, InputSizeError
from sapiens2_edge.quantization.config import QuantRecipe
from sapiens2_edge.quantization.evaluate import evaluate
from sapiens2_edge.quantization.schemes import Calibration
from sapiens2_edge.quantization.serialize import load_quantized, save_quantized
from tests.fixtures.gates import assert_int8_gates
from tests.fixtures.synthetic import make_people
from tests.fixtures.tiny import save, tiny_model

DATA = Path(__file__).parent / "fixtures" / "data"
SIZE, SMALL = (128, 96), (64, 48)
CALIB = list(make_people(8, seed=1001, size=SIZE)[0])
HELD_OUT = list(make_people(8, seed=2002, size=SIZE)[0])
STATIC = {"activation_mode": "static", "progress": False}


@pytest.fixture(scope="module")
def seg():
    return s2e.load_model(DATA / "trained_tiny_seg.safetensors")


def test_calibrating_smaller_is_the_calibration_at_that_size_and_the_report_stays_at_the_input(seg):
    """The quantized tensors are those of a model calibrated with ``input_size`` = the small size
    (same images, same forwards); the held-out report is measured at the network input and equals
    a separate ``evaluate`` there, against the same (smoothed: ``inplace``) float model."""
    smoothed = copy.deepcopy(seg)
    q, rep = s2e.quantize(smoothed, "int8", CALIB, input_size=SIZE, calibration_input_size=SMALL, held_out=HELD_OUT,
                          held_out_samples=4, inplace=True, **STATIC)
    ref, _ = s2e.quantize(seg, "int8", CALIB, input_size=SMALL, **STATIC)
    got, want = q.state_dict(), ref.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert rep.calibration["input_size"] == list(SMALL) and rep.calibration["report_input_size"] == list(SIZE)
    # against the caller's own float model the labels could differ where float rounding flips a near tie
    separate = evaluate(smoothed, q, HELD_OUT, input_size=SIZE, samples=4)
    assert rep.fidelity["seg_agreement"] == pytest.approx(separate["seg_agreement"], abs=1e-6)
    assert q.recipe.calibration_input_size == SMALL and q.recipe.input_size == SIZE


def test_without_held_out_data_the_report_reads_the_calibration_inputs_at_their_size(seg):
    _, rep = s2e.quantize(seg, "int8", CALIB, input_size=SIZE, calibration_input_size=SMALL, report_samples=2,
                          **STATIC)
    assert rep.calibration["input_size"] == rep.calibration["report_input_size"] == list(SMALL)
    assert rep.calibration["report_samples"] == 2


@pytest.mark.parametrize("task", ["seg", "pose"])
def test_trained_fixtures_calibrated_at_half_the_side_meet_the_gates(seg, task):
    """Static int8 calibrated at 64x48 (12 patch tokens) and run at 128x96 (48): seg agreement
    >= 99 %, pose displacement <= 0.5 px, the gates of full-size calibration."""
    model = seg if task == "seg" else s2e.load_model(DATA / "trained_tiny_pose.safetensors")
    q, _ = s2e.quantize(model, "int8", CALIB, input_size=SIZE, calibration_input_size=SMALL, **STATIC)
    assert_int8_gates(model, q, task)


def test_a_mixed_budget_search_calibrates_its_candidates_at_the_asked_size(seg):
    """The search measures each candidate at the network input, and calibrates it at the smaller one."""
    q, rep = s2e.quantize(seg, "mixed", CALIB, input_size=SIZE, calibration_input_size=SMALL,
                          budget="seg_agreement>=0.995", samples=4, **STATIC)
    assert rep.calibration["input_size"] == list(SMALL) and q.recipe.calibration_input_size == SMALL
    assert rep.fidelity["seg_agreement"] >= 0.995
    assert evaluate(seg, q, CALIB[:4], input_size=SIZE, samples=4)["seg_agreement"] == pytest.approx(
        rep.fidelity["seg_agreement"], abs=1e-6)


def test_the_recipe_keeps_both_sizes_through_a_saved_checkpoint(tmp_path):
    q, _ = s2e.quantize(tiny_model("seg"), "int8", CALIB, input_size=SIZE, calibration_input_size=SMALL,
                        calibration_size=2, **STATIC)
    back = load_quantized(save_quantized(q, tmp_path / "q.safetensors"))
    assert back.recipe.calibration_input_size == SMALL and back.recipe.input_size == SIZE
    assert Calibration(CALIB, calibration_input_size=[64, 48]).calibration_input_size == SMALL
    older = {k: v for k, v in q.recipe.to_dict().items() if k != "calibration_input_size"}
    assert QuantRecipe.from_dict(older).calibration_input_size is None  # recipes written before the option


@pytest.mark.parametrize("size, err, match", [
    ((60, 48), InputSizeError, "calibration_input_size: input size 60x48 is not a positive multiple of 16"),
    ((64,), ConfigError, r"calibration_input_size must be \(H, W\) positive integers, e.g. \(512, 384\); got \(64,\)"),
    ((0, 48), ConfigError, r"calibration_input_size must be \(H, W\) positive integers"),
])
def test_a_calibration_size_the_model_cannot_take_is_refused(size, err, match):
    with pytest.raises(err, match=match):
        s2e.quantize(tiny_model("seg"), "int8", CALIB, input_size=SIZE, calibration_input_size=size, **STATIC)


def test_pointmap_calibrates_at_the_size_its_head_was_built_for():
    model = tiny_model("pointmap")
    small = tuple(v // 2 for v in model.input_size)
    with pytest.raises(InputSizeError, match=r"calibration_input_size: the pointmap head's scale branch was built for "
                                             rf"{model.input_size[0]}x{model.input_size[1]} inputs"):
        s2e.quantize(model, "int8", CALIB, calibration_input_size=small, **STATIC)


def _image_folder(path: Path, n: int) -> Path:
    path.mkdir()
    for i, image in enumerate(CALIB[:n]):
        cv2.imwrite(str(path / f"{i}.png"), image[:, :, ::-1])
    return path


def test_cli_quantize_calibrates_at_the_asked_size(tmp_path):
    images = _image_folder(tmp_path / "imgs", 6)
    ckpt = save(tiny_model("seg"), tmp_path / "seg.safetensors")
    out, report = tmp_path / "q.safetensors", tmp_path / "q.json"
    res = CliRunner().invoke(app, ["quantize", str(ckpt), "--calib", str(images), "--calib-size", "4",
                                   "--eval-samples", "2", "--activation-mode", "static", "-o", str(out),
                                   "--report", str(report), "--input-size", "128x96", "--calib-input-size", "64x48"])
    assert res.exit_code == 0, res.output
    assert "4 images at 64x48" in res.output  # the report table's calibration row
    calibration = json.loads(report.read_text())["calibration"]
    assert calibration["input_size"] == [64, 48] and calibration["report_input_size"] == [128, 96]
    assert load_quantized(out).recipe.calibration_input_size == (64, 48)


def test_cli_export_calibrates_at_the_asked_size(tmp_path):
    images = _image_folder(tmp_path / "imgs", 4)
    ckpt = save(tiny_model("seg"), tmp_path / "seg.safetensors")
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "onnx", "--scheme", "int8", "--calib", str(images),
                                   "--calib-size", "4", "--input-size", "128x96", "--calib-input-size", "64x48",
                                   "--max-batch", "1", "-o", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    recipe = json.loads((tmp_path / "a" / "manifest.json").read_text())["quantization"]["recipe"]
    assert recipe["calibration_input_size"] == [64, 48] and recipe["input_size"] == [128, 96]
