"""The person detector exported as an artifact (onnx, openvino, torch; float only), opened by the
runtime as a PersonDetector, and carried inside a pose artifact so that ``Predictor(pose_dir)``
runs detection and pose; the typed errors of wrong or damaged detector artifacts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sapiens2_edge as s2e
from sapiens2_edge.artifact import read_manifest
from sapiens2_edge.cli import app
from sapiens2_edge.detection.config import DETECTOR_METADATA_KEY, DETECTOR_NAME, RTMDetConfig
from sapiens2_edge.detection.detector import RTMDetPersonDetector
from sapiens2_edge.detection.model import RTMDet, rtmdet_m
from sapiens2_edge.errors import ArtifactError, ChecksumError, ConfigError, TaskMismatchError
from sapiens2_edge.exporters import detector_checkpoint
from sapiens2_edge.models.lean_head import layer_by_layer
from sapiens2_edge.models.safetensors_io import write_tensors
from sapiens2_edge.runtime import verify_artifact
from sapiens2_edge.runtime.detectors import ArtifactDetector
from sapiens2_edge.spec import DETECTION_OUTPUT_NAMES, DETECTION_TASK
from tests.fixtures.tiny import INPUT, save, tiny_model

TINY_DET = RTMDetConfig(widen_factor=0.125, deepen_factor=0.33, neck_in_channels=(32, 64, 128), neck_out_channels=16,
                        feat_channels=16)
RNG = np.random.default_rng(3)
IMAGE = RNG.integers(0, 256, (160, 200, 3), dtype=np.uint8)


def tiny_detector(seed: int = 0) -> RTMDet:
    torch.manual_seed(seed)
    return RTMDet(TINY_DET).eval()


def fixed_detector() -> RTMDet:
    """Zero head weights: the stride-32 level scores sigmoid(1) everywhere with 160-pixel distances, the
    others nothing; so every backend computes the same values exactly and the demo keeps 4 people."""
    model = tiny_detector()
    with torch.no_grad():
        for level, (cls, reg) in enumerate(zip(model.bbox_head.rtm_cls, model.bbox_head.rtm_reg, strict=True)):
            cls.weight.zero_()
            reg.weight.zero_()
            cls.bias.fill_((-10.0, -10.0, 1.0)[level])
            reg.bias.fill_(5.0)
    return model


@pytest.fixture(scope="module")
def onnx_det(tmp_path_factory):
    model = tiny_detector()
    return model, s2e.export(model, tmp_path_factory.mktemp("det") / "det_onnx", format="onnx", max_batch=2)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """(pose model, fixed detector, its torch artifact, the torch pose artifact carrying it)."""
    root = tmp_path_factory.mktemp("chain")
    det = fixed_detector()
    det_dir = s2e.export(det, root / "det", format="torch", max_batch=2)
    pose = tiny_model("pose")
    pose_dir = s2e.export(pose, root / "pose", format="torch", input_size=INPUT, detector=det_dir)
    return pose, det, det_dir, pose_dir


def test_onnx_detector_artifact_is_verified_and_detects_as_torch(onnx_det):
    model, root = onnx_det
    m = read_manifest(root)
    assert m.task == DETECTION_TASK and m.outputs == list(DETECTION_OUTPUT_NAMES) and m.input_size == [640, 640]
    assert m.rope_mode is None and m.arch["family"] == "rtmdet" and m.arch["strides"] == [8, 16, 32]
    assert m.preprocessing["channels"] == "BGR" and m.preprocessing["pad_value"] == 114
    assert m.fidelity["tolerance"] == 1e-3 and m.fidelity["rel_l2"] < 1e-4 and m.fidelity["reference"] == "torch fp32 eager"
    assert verify_artifact(root)["passed"]
    det, ref = ArtifactDetector(root), RTMDetPersonDetector(model)
    assert det.backend == "onnxruntime"
    images = [IMAGE, RNG.integers(0, 256, (300, 220, 3), dtype=np.uint8), IMAGE[:, ::-1].copy()]
    for (b1, s1, l1), (b2, s2, l2) in zip(det.raw(images), ref.raw(images), strict=True):  # 3 images, batch 2
        np.testing.assert_allclose(s1, s2, atol=1e-5)
        np.testing.assert_array_equal(l1, l2)
        np.testing.assert_allclose(b1, b2, atol=1e-2)
    people, torch_people = det(images), ref(images)
    for a, b in zip(people, torch_people, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)


def test_cli_verify_and_info_on_a_detector_artifact(onnx_det):
    _, root = onnx_det
    out = CliRunner().invoke(app, ["verify", str(root), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["passed"] is True
    out = CliRunner().invoke(app, ["info", str(root), "--json"])
    assert out.exit_code == 0 and '"detection"' in out.output


def test_int8_and_other_formats_are_refused_for_the_detector(tmp_path):
    model = tiny_detector()
    with pytest.raises(ConfigError, match=r"scheme='int8': the person detector exports in float only .*relative L2"):
        s2e.export(model, tmp_path / "a", format="onnx", scheme="int8")
    with pytest.raises(ConfigError, match="a onnx detector artifact has precision fp32 or fp16, got precision='int8'; "
                                          "the person detector exports in float only"):
        s2e.export(model, tmp_path / "a", format="onnx", precision="int8")
    with pytest.raises(ConfigError, match="exports to onnx, openvino, torch, not 'coreml'"):
        s2e.export(model, tmp_path / "a", format="coreml")
    with pytest.raises(ConfigError, match="this export is the detector itself"):
        s2e.export(model, tmp_path / "a", format="torch", detector=tmp_path)
    assert not (tmp_path / "a").exists()


def test_chain_from_the_pose_artifact_equals_the_torch_detector(chain):
    pose, det, det_dir, pose_dir = chain
    m = read_manifest(pose_dir)
    assert m.options["detector"] == "detector" and m.files["detector/manifest.json"]["role"] == "detector:manifest"
    assert m.file_for("model") == "model.pt2"  # the detector's files carry their own roles
    pred = s2e.Predictor(pose_dir)
    assert isinstance(pred.detector, ArtifactDetector) and pred.detector.root == pose_dir / "detector"
    got = pred(IMAGE)
    assert len(got) == 4
    same = s2e.Predictor(pose_dir, detector=RTMDetPersonDetector(det))(IMAGE)  # pose artifact, torch detector
    np.testing.assert_array_equal(got.boxes, same.boxes)
    np.testing.assert_array_equal(got.keypoints, same.keypoints)
    np.testing.assert_array_equal(got.detection_scores, same.detection_scores)
    # all torch eager, the head's layers one by one as the .pt2 program runs them: the lean eager head's float
    # rounding (rel ~1e-6) moves argmax near-ties in this random model's flat heatmaps by pixels
    with layer_by_layer():
        eager = s2e.Predictor(pose, input_size=INPUT, detector=RTMDetPersonDetector(det))(IMAGE)
    np.testing.assert_array_equal(got.boxes, eager.boxes)
    np.testing.assert_allclose(got.keypoints, eager.keypoints, atol=1e-2)
    assert len(s2e.Predictor(pose_dir, detector=False)(IMAGE)) == 1  # the whole image
    assert len(s2e.Predictor(pose_dir, detector=str(det_dir))(IMAGE)) == 4  # a detector artifact directory


def test_wrong_task_artifacts_are_typed_errors(chain, tmp_path):
    pose, _, det_dir, pose_dir = chain
    with pytest.raises(TaskMismatchError, match=r"is a person detector artifact, not a Sapiens2 task model: pass it as "
                                                r"detector="):
        s2e.Predictor(det_dir)
    with pytest.raises(TaskMismatchError, match=r"is a pose artifact, not a person detector \(its manifest's task is "
                                                r"'pose', expected 'detection'\)"):
        ArtifactDetector(pose_dir)
    with pytest.raises(TaskMismatchError, match=r"detector= .* is a pose artifact, not a person detector"):
        s2e.export(pose, tmp_path / "p", format="torch", input_size=INPUT, detector=pose_dir)
    with pytest.raises(ConfigError, match="bundles a person detector with a pose artifact; this is a seg model"):
        s2e.export(tiny_model("seg"), tmp_path / "s", format="torch", input_size=INPUT, detector=det_dir)
    with pytest.raises(ArtifactError, match=r"detector= .*nowhere' is not a directory; expected an exported detector"):
        s2e.export(pose, tmp_path / "p", format="torch", input_size=INPUT, detector=tmp_path / "nowhere")
    assert not (tmp_path / "p").exists()


def test_missing_or_altered_bundled_detector_is_refused(chain, tmp_path):
    *_, pose_dir = chain
    gone = shutil.copytree(pose_dir, tmp_path / "gone")
    shutil.rmtree(gone / "detector")
    with pytest.raises(ArtifactError, match=r"artifact .*gone is missing detector/manifest.json \(listed in its "
                                            r"manifest\)"):
        s2e.Predictor(gone)
    altered = shutil.copytree(pose_dir, tmp_path / "altered")
    with open(altered / "detector" / "model.pt2", "r+b") as f:
        f.seek(100)
        f.write(b"\0\0\0\0")
    with pytest.raises(ChecksumError, match=r"detector/model.pt2 does not match its sha256 in the manifest"):
        s2e.Predictor(altered)
    unlisted = shutil.copytree(pose_dir, tmp_path / "unlisted")
    data = json.loads((unlisted / "manifest.json").read_text())
    data["files"] = {k: v for k, v in data["files"].items() if not k.startswith("detector/")}
    (unlisted / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"options.detector names 'detector', but the manifest does not list "
                                            r"detector/manifest.json"):
        s2e.Predictor(unlisted)
    data["options"]["detector"] = "../elsewhere"
    (unlisted / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"options.detector: the file name '../elsewhere' has an empty, '.' or "
                                            r"'..' part"):
        s2e.Predictor(unlisted)


@pytest.mark.slow
def test_openvino_detector_artifact(tmp_path):
    model = tiny_detector(1)
    root = s2e.export(model, tmp_path / "det_ov", format="openvino")
    det = ArtifactDetector(root)
    assert det.backend == "openvino" and verify_artifact(root)["passed"]
    (b1, s1, _), (b2, s2, _) = det.raw([IMAGE])[0], RTMDetPersonDetector(model).raw([IMAGE])[0]
    np.testing.assert_allclose(s1, s2, atol=1e-4)
    np.testing.assert_allclose(b1, b2, atol=1e-2)


def test_cli_export_carries_a_detector_and_recognises_detector_checkpoints(chain, tmp_path):
    _, _, det_dir, _ = chain
    ckpt = save(tiny_model("pose"), tmp_path / "pose.safetensors")
    out = CliRunner().invoke(app, ["export", str(ckpt), "-f", "torch", "-o", str(tmp_path / "p"), "--input-size",
                                   "128x96", "--detector", str(det_dir)])
    assert out.exit_code == 0, out.output
    assert read_manifest(tmp_path / "p").options["detector"] == "detector"
    assert isinstance(s2e.Predictor(tmp_path / "p").detector, ArtifactDetector)
    path = write_tensors(rtmdet_m(seed=0).state_dict(), tmp_path / "det.safetensors",
                         metadata={DETECTOR_METADATA_KEY: DETECTOR_NAME})
    assert isinstance(detector_checkpoint(str(path)), RTMDet) and detector_checkpoint(str(ckpt)) == str(ckpt)
