"""ONNX export, the artifact manifest, and running artifacts through the Predictor."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import sapiens2_edge as s2e
from sapiens2_edge.errors import (
    ArtifactError,
    BackendUnavailableError,
    ChecksumError,
    ConfigError,
    ExportError,
    InputSizeError,
)
from sapiens2_edge.exporters import export, read_manifest, verification_inputs
from tests.fixtures.tiny import INPUT, tiny_model

IMAGE = np.random.default_rng(1).integers(0, 256, (150, 110, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def seg_artifact(tmp_path_factory):
    model = tiny_model("seg", seed=2)
    return model, export(model, tmp_path_factory.mktemp("a") / "seg-fp32", format="onnx", input_size=INPUT, max_batch=3)


@pytest.fixture()
def copy(seg_artifact, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(seg_artifact[1], dst)
    return dst


def test_manifest_and_verification(seg_artifact):
    _, root = seg_artifact
    m = read_manifest(root)
    assert (m.format, m.task, m.input_size, m.max_batch, m.precision) == ("onnx", "seg", [128, 96], 3, "fp32")
    assert m.preprocessing["mean"] == [123.675, 116.28, 103.53] and m.preprocessing["input_size"] == [128, 96]
    assert set(m.files) == {"model.onnx", "reference.npz"} and len(m.files["model.onnx"]["sha256"]) == 64
    assert m.fidelity["rel_l2"] <= 1e-4  # the fp32 target
    assert m.arch["depth"] == 18 and m.rope_mode == "bf16" and m.outputs == ["logits"]


def test_predictor_runs_artifact_like_torch(seg_artifact):
    model, root = seg_artifact
    pred = s2e.Predictor(root)
    assert pred.backend == "onnxruntime" and "auto" in pred.backend_reason and pred.model is None
    ref = s2e.Predictor(model, input_size=INPUT)
    images = [IMAGE, IMAGE[:60], IMAGE[:, :70], IMAGE[10:]]  # 4 images > max_batch 3: split into calls
    for got, want in zip(pred(images), ref(images), strict=True):
        assert np.mean(got.labels == want.labels) > 0.999


def test_backend_batch_limit(seg_artifact):
    pred = s2e.Predictor(seg_artifact[1])
    with pytest.raises(InputSizeError, match="batch of 4 is larger than the 3 this artifact was exported for"):
        pred.runner(verification_inputs(INPUT, batch=4))


def test_altered_and_missing_files(copy):
    with open(copy / "model.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00")
    with pytest.raises(ChecksumError, match="does not match its sha256"):
        s2e.Predictor(copy)
    (copy / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing model.onnx"):
        s2e.Predictor(copy)


def test_newer_schema_refused(copy):
    data = json.loads((copy / "manifest.json").read_text())
    data["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="schema 99, newer than this SDK's 1"):
        s2e.Predictor(copy)


def test_wrong_input_size_and_backend(seg_artifact, monkeypatch):
    root = seg_artifact[1]
    with pytest.raises(InputSizeError, match="exported for 128x96 inputs, got input_size=.1024, 768."):
        s2e.Predictor(root, input_size=(1024, 768))
    with pytest.raises(ConfigError, match="onnx artifact cannot run on backend 'coreml'"):
        s2e.Predictor(root, backend="coreml")
    import sapiens2_edge.runtime.opener as art

    monkeypatch.setattr(art, "installed", lambda name: False)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'sapiens2-edge\[onnx\]'"):
        s2e.Predictor(root)


def test_export_errors_leave_nothing_behind(tmp_path, seg_artifact):
    model = seg_artifact[0]
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export(model, tmp_path / "x", format="tflite")
    with pytest.raises(ArtifactError, match="already exists"):
        export(model, seg_artifact[1], input_size=INPUT)
    with pytest.raises(InputSizeError, match="not a positive multiple of 16"):
        export(model, tmp_path / "y", input_size=(100, 96))
    with pytest.raises(ExportError, match="does not match torch: relative L2"):
        export(model, tmp_path / "z", input_size=INPUT, max_batch=2, tolerance=0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no half-written artifact, no temp dir


def test_fp16_export(tmp_path):
    root = export(tiny_model("normal"), tmp_path / "n16", precision="fp16", input_size=INPUT, max_batch=1)
    m = read_manifest(root)
    assert m.precision == "fp16" and 0 < m.fidelity["rel_l2"] <= 2e-2
    import onnx

    weights = sum(onnx.numpy_helper.to_array(t).nbytes for t in onnx.load(str(root / "model.onnx")).graph.initializer)
    assert weights < 0.55 * sum(p.numel() * 4 for p in tiny_model("normal").parameters())
    res = s2e.Predictor(root)(IMAGE)
    ref = s2e.Predictor(tiny_model("normal"), input_size=INPUT)(IMAGE)
    cos = np.sum(res.normal * ref.normal, -1) / np.linalg.norm(res.normal, axis=-1) / np.linalg.norm(ref.normal, axis=-1)
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))).mean() < 1.0


def test_verify_detects_numeric_drift(seg_artifact):
    from sapiens2_edge.exporters import verify_artifact

    ok = verify_artifact(seg_artifact[1])
    assert ok["passed"] and ok["rel_l2"] <= 1e-4 and ok["backend"] == "onnxruntime"
    strict = verify_artifact(seg_artifact[1], tolerance=0.0)
    assert not strict["passed"]


def test_cli_export_openvino_then_verify(tmp_path):
    from typer.testing import CliRunner

    from sapiens2_edge.cli import app
    from tests.fixtures.tiny import save

    ckpt = save(tiny_model("pointmap"), tmp_path / "pm.safetensors")
    out = tmp_path / "pm-ov"
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "openvino", "--output", str(out), "--max-batch", "2"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps long lines
    assert "(openvino fp32, 256x192" in text and "[torch.onnx]" not in text
    m = read_manifest(out)
    assert set(m.files) == {"openvino/model.xml", "openvino/model.bin", "reference.npz"}
    assert m.outputs == ["pointmap", "scale"] and m.fidelity["rel_l2"] <= 1e-4
    res = CliRunner().invoke(app, ["verify", str(out)])
    assert res.exit_code == 0 and "passed" in res.output, res.output
    pred = s2e.Predictor(out)
    assert pred.backend == "openvino" and pred(IMAGE).points.shape == (150, 110, 3)
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "tflite", "--output", str(tmp_path / "c")])
    assert res.exit_code == 2 and "'tflite' is not one of 'onnx', 'openvino', 'coreml', 'torch', 'native'" in " ".join(res.output.split())


def test_bench_command_rows_and_reports(seg_artifact, tmp_path):
    from typer.testing import CliRunner

    from sapiens2_edge.cli import app

    out = tmp_path / "bench"
    res = CliRunner().invoke(app, ["bench", str(seg_artifact[1]), "--backend", "onnxruntime", "--backend", "openvino",
                                   "--runs", "2", "--output-dir", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "bench.json").read_text())
    rows = data["rows"]
    assert [r["backend"] for r in rows] == ["torch", "onnxruntime", "openvino"]
    assert rows[0]["artifact"] == "torch-fp32-eager" and rows[0]["speedup"] == 1.0
    for r in rows:
        assert r["count"] == 2 and r["min_s"] <= r["median_s"] <= r["max_s"] and r["peak_rss_mb"] > 0
        assert r["speedup"] == pytest.approx(rows[0]["median_s"] / r["median_s"])
    assert rows[1]["fidelity_rel_l2"] <= 1e-4 and rows[1]["size_mb"] > 0
    md = (out / "bench.md").read_text()
    assert md.count("\n| ") == 1 + 3 and "--backend openvino --runs 2" in md and (out / "bench.csv").exists()
    bad = CliRunner().invoke(app, ["bench", str(seg_artifact[1]), "--backend", "coreml", "--no-baseline"])
    assert bad.exit_code == 2 and "cannot run on backend 'coreml'" in " ".join(bad.output.split())


def test_cli_predict_runs_an_artifact(seg_artifact, tmp_path):
    import cv2
    from typer.testing import CliRunner

    from sapiens2_edge.cli import app

    cv2.imwrite(str(tmp_path / "a.png"), IMAGE)
    res = CliRunner().invoke(app, ["predict", str(seg_artifact[1]), "-i", str(tmp_path / "a.png"), "-o",
                                   str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "onnxruntime" in res.output and np.load(tmp_path / "out" / "a_labels.npy").shape == (150, 110)


def test_runtime_path_imports_no_torch(seg_artifact):
    """Predictor on an ONNX artifact in a process where importing torch fails."""
    from tests.fixtures.no_torch import predict_without_torch

    proc = predict_without_torch(seg_artifact[1], backend="onnxruntime")
    assert proc.returncode == 0 and "ok onnxruntime" in proc.stdout, proc.stderr[-2000:]
