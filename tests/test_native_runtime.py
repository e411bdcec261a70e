"""The native backend inside the runtime: Predictor on a native artifact, backend="auto" choices,
the CLI's --format native, and a runtime path that imports no torch."""

from __future__ import annotations

import numpy as np
import pytest

import sapiens2_edge as s2e
from sapiens2_edge.artifact import Manifest
from sapiens2_edge.errors import ConfigError
from sapiens2_edge.exporters import export, verify_artifact
from sapiens2_edge.runtime import opener as art
from tests.fixtures.no_torch import predict_without_torch
from tests.fixtures.tiny import INPUT, tiny_model

IMAGE = np.random.default_rng(1).integers(0, 256, (150, 110, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def seg_native(tmp_path_factory):
    model = tiny_model("seg", seed=2)
    return model, export(model, tmp_path_factory.mktemp("a") / "seg-native", format="native", input_size=INPUT,
                         max_batch=3)


def test_predictor_auto_chooses_native(seg_native):
    model, root = seg_native
    pred = s2e.Predictor(root)
    assert pred.backend == "native" and "auto" in pred.backend_reason and pred.model is None
    assert "native C++ engine (float32 weights" in pred.runner.describe()
    ref = s2e.Predictor(model, input_size=INPUT)
    images = [IMAGE, IMAGE[:60], IMAGE[:, :70], IMAGE[10:]]  # 4 images > max_batch 3: split into calls
    for got, want in zip(pred(images), ref(images), strict=True):
        assert np.mean(got.labels == want.labels) > 0.999


def test_verify_with_native(seg_native):
    result = verify_artifact(seg_native[1], backend="native")
    assert result["passed"] and result["backend"] == "native" and result["rel_l2"] <= 1e-4


def manifest(fmt: str, files: dict) -> Manifest:
    return Manifest(format=fmt, task="seg", arch={}, head=None, input_size=[128, 96], max_batch=1, precision="fp32",
                    rope_mode="bf16", preprocessing={}, outputs=["logits"], files=files)


def test_auto_falls_back_to_native_for_any_artifact_with_weights(monkeypatch):
    monkeypatch.setattr(art, "installed", lambda name: name == "native")
    with_weights = {"weights.safetensors": {"role": "model"}}
    assert art.choose_backend(manifest("native", with_weights), "auto")[0] == "native"
    name, why = art.choose_backend(manifest("torch", with_weights), "auto")
    assert name == "native" and "torch not installed" in why
    assert art.choose_backend(manifest("torch", with_weights), "native") == ("native", "asked for")
    with pytest.raises(ConfigError, match="cannot run on backend 'native'; it runs on onnxruntime, openvino"):
        art.choose_backend(manifest("onnx", {"model.onnx": {"role": "model"}}), "native")
    # A faster runtime, when installed, still comes first.
    monkeypatch.setattr(art, "installed", lambda name: True)
    assert art.choose_backend(manifest("torch", with_weights), "auto")[0] == "torch"


def test_native_backend_is_cpu_only(seg_native):
    with pytest.raises(ConfigError, match="the native engine runs on the CPU; device='cuda'"):
        s2e.Predictor(seg_native[1], backend="native", device="cuda")


def test_cli_export_native_then_verify(tmp_path):
    from typer.testing import CliRunner

    from sapiens2_edge.cli import app
    from tests.fixtures.tiny import save

    ckpt = save(tiny_model("pose", seed=3), tmp_path / "pose.safetensors")
    out = tmp_path / "pose-native"
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "native", "-o", str(out),
                                   "--input-size", "128x96", "--max-batch", "2"])
    assert res.exit_code == 0, res.output
    assert "native" in res.output and (out / "weights.safetensors").is_file()
    res = CliRunner().invoke(app, ["verify", str(out), "--backend", "native"])
    assert res.exit_code == 0, res.output


def test_runtime_path_imports_no_torch(seg_native):
    """Predictor(backend="auto") on a native artifact in a process where importing torch fails."""
    proc = predict_without_torch(seg_native[1])
    assert proc.returncode == 0 and "ok native" in proc.stdout, proc.stderr[-2000:]


def test_torch_backend_runs_native_weights(seg_native):
    """A native artifact's weights are a self-describing checkpoint: the torch backend runs them too."""
    model, root = seg_native
    pred = s2e.Predictor(root, backend="torch", device="cpu")
    assert pred.backend == "torch" and pred.backend_reason == "asked for"
    want = s2e.Predictor(model, input_size=INPUT)(IMAGE)
    assert np.mean(pred(IMAGE).labels == want.labels) > 0.999
    result = verify_artifact(root, backend="torch")
    assert result["passed"] and result["backend"] == "torch" and result["rel_l2"] <= 1e-5
