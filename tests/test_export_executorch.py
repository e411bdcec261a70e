"""ExecuTorch (``format="executorch"``): a .pte lowered to XNNPACK, checked against the torch model
through ExecuTorch's runtime, the Predictor, verify and the command line; what it refuses."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import sapiens2_edge as s2e
from sapiens2_edge.artifact import Manifest
from sapiens2_edge.bench import measure_row
from sapiens2_edge.cli import app
from sapiens2_edge.errors import BackendUnavailableError, ConfigError
from sapiens2_edge.exporters import compare, export, read_manifest, torch_outputs, verification_inputs
from sapiens2_edge.exporters.executorch_export import PTE_FILE, check_model
from sapiens2_edge.models.arch import ArchSpec
from sapiens2_edge.quantization.config import layer_config
from sapiens2_edge.quantization.linear import QuantLinear
from sapiens2_edge.runtime.opener import choose_backend
from sapiens2_edge.runtime.verify import verify_artifact
from tests.fixtures.tiny import save, tiny_model

SIZE = (64, 48)
# XNNPACK lowering costs per graph node: three blocks (the middle one grouped-query) keep it short
SMALL = ArchSpec(64, 3, 4, (4, 2, 4), 256, name="tiny-gqa3")
IMAGE = np.random.default_rng(1).integers(0, 256, (90, 70, 3), dtype=np.uint8)


@pytest.mark.parametrize("config, why", [
    (layer_config("int8", activation_mode="static"), "int8/static.*needs a calibrated output scale"),
    (layer_config("fp8"), "fp8/dynamic.*XNNPACK has no fp8 kernels"),
])
def test_executorch_refuses_layers_xnnpack_cannot_run_naming_them(config, why):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = QuantLinear.from_float(nn.Linear(16, 16), config, 0, torch.ones(()))

    with pytest.raises(ConfigError, match=f"layer qkv is quantized {why}"):
        check_model(Model(), "int8")
    with pytest.raises(ConfigError, match="executorch precision 'bf16' is not supported; the executorch format "
                                          "carries fp32, fp16, int8-weight"):
        check_model(nn.Linear(4, 4), "bf16")
    with pytest.raises(ConfigError, match="cannot carry quantization scheme 'fp8'"):
        export(tiny_model("seg"), "unused", format="executorch", scheme="fp8")


def test_missing_executorch_gives_the_install_hint(monkeypatch):
    from sapiens2_edge.runtime import executorch_backend, opener

    monkeypatch.setitem(sys.modules, "executorch.runtime", None)  # import fails as when not installed
    with pytest.raises(BackendUnavailableError, match=r"pip install 'sapiens2-edge\[executorch\]'"):
        executorch_backend.import_executorch_runtime()
    monkeypatch.setattr(opener, "installed", lambda name: False)
    m = Manifest(format="executorch", task="seg", arch={}, head=None, input_size=list(SIZE), max_batch=1,
                 precision="fp32", rope_mode="bf16", preprocessing={}, outputs=["logits"], options={},
                 sdk_version="0")
    with pytest.raises(BackendUnavailableError, match=r"pip install 'sapiens2-edge\[executorch\]'"):
        choose_backend(m, "auto")


@pytest.fixture(scope="module")
def seg():
    return tiny_model("seg", arch=SMALL, seed=3)


@pytest.fixture(scope="module")
def seg_pte(seg, tmp_path_factory):
    return export(seg, tmp_path_factory.mktemp("et") / "seg-fp32", format="executorch", input_size=SIZE, max_batch=2)


@pytest.mark.slow  # XNNPACK lowering
def test_executorch_artifact_matches_torch(seg, seg_pte):
    m = read_manifest(seg_pte)
    assert (m.format, m.precision, m.max_batch) == ("executorch", "fp32", 2)
    assert set(m.files) == {PTE_FILE, "reference.npz"}
    assert m.fidelity["rel_l2"] <= m.fidelity["tolerance"] == 1e-3
    assert m.options["executorch"]["delegate"] == "XNNPACK"
    params = sum(t.numel() * t.element_size() for t in seg.state_dict().values())
    assert 0.9 < (seg_pte / PTE_FILE).stat().st_size / params < 1.3  # fp32 weights, stored once
    pred = s2e.Predictor(seg_pte)
    assert pred.backend == "executorch" and "auto" in pred.backend_reason
    x = verification_inputs(SIZE, batch=2, seed=5)  # a batch of 2 through the batch-1 program
    assert compare(torch_outputs(seg, x), pred.runner(x), ["logits"])["rel_l2"] < 1e-3
    ref = s2e.Predictor(seg, input_size=SIZE)
    assert np.mean(pred(IMAGE).labels == ref(IMAGE).labels) > 0.999
    assert verify_artifact(seg_pte)["passed"]
    row = measure_row(str(seg_pte), "auto", warmup=0, runs=1, batch=2)  # what `sapiens2-edge bench` times
    assert row["backend"] == "executorch" and row["batch"] == 2 and row["median_s"] > 0


@pytest.mark.slow  # XNNPACK lowering
def test_cli_export_executorch_fp16(seg, seg_pte, tmp_path):
    ckpt = save(seg, tmp_path / "tiny_seg.safetensors")
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "executorch", "--scheme", "fp16", "-o",
                                   str(tmp_path / "a"), "--input-size", "64x48", "--max-batch", "1"])
    assert res.exit_code == 0, res.output
    m = read_manifest(tmp_path / "a")
    assert m.precision == "fp16" and m.fidelity["rel_l2"] <= m.fidelity["tolerance"] == 2e-2
    # every linear's weight is stored as float16, byte for byte, with no float32 copy (XNNPACK keeps
    # convolution weights - head, patch embedding - in float32 in any program)
    blob = (tmp_path / "a" / PTE_FILE).read_bytes()
    linears = [mod.weight.detach() for mod in seg.modules() if isinstance(mod, nn.Linear)]
    assert linears and all(w.half().numpy().tobytes() in blob and w.numpy().tobytes() not in blob for w in linears)
    assert len(blob) < 0.8 * (seg_pte / PTE_FILE).stat().st_size
    res = CliRunner().invoke(app, ["verify", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output


def _layers(model):
    return {n: m.decompose() for n, m in model.named_modules() if isinstance(m, QuantLinear)}


@pytest.mark.slow  # XNNPACK lowering
@pytest.mark.parametrize("scheme, kernel", [("int8", "qd8-f32-qc8w"), ("int4-weight", "qd8-f32-qb4w")])
def test_quantized_program_holds_our_integer_weights(seg, seg_pte, tmp_path, scheme, kernel):
    qmodel, _ = s2e.quantize(seg, scheme, progress=False)
    out = export(qmodel, tmp_path / scheme, format="executorch", input_size=SIZE, max_batch=2, float_model=seg)
    m = read_manifest(out)
    layers = _layers(qmodel)
    assert m.precision == scheme and m.quantization["export"]["xnnpack_linears"] == {kernel: len(layers)}
    assert "per token" in m.quantization["export"]["activations"]
    # checked against the torch model with its linears as lowered, at the quantized-activation bound
    assert "as XNNPACK runs them" in m.fidelity["reference"]
    assert m.fidelity["rel_l2"] <= m.fidelity["tolerance"] == 5e-2
    vs_float = m.fidelity["vs_float"]
    assert vs_float["artifact"]["rel_l2"] < vs_float["torch_quantized"]["rel_l2"] + 0.02
    blob = (out / PTE_FILE).read_bytes()
    # every layer's integer weights are ours, byte for byte (int4: our packed nibbles, XNNPACK's layout too)
    assert all(d.weight.numpy().tobytes() in blob for d in layers.values())
    if scheme == "int4-weight":
        assert "bfloat16" in m.quantization["export"]["int4_scales"]
        assert len(blob) < 0.5 * (seg_pte / PTE_FILE).stat().st_size
    pred = s2e.Predictor(out)
    assert pred.backend == "executorch"
    x = verification_inputs(SIZE, batch=2, seed=5)
    assert compare(torch_outputs(qmodel, x), pred.runner(x), ["logits"])["rel_l2"] < 5e-2
    assert verify_artifact(out)["passed"]


@pytest.mark.slow  # XNNPACK lowering
def test_cli_export_executorch_int8_weight(tmp_path):
    ckpt = save(tiny_model("seg", arch=SMALL, seed=5), tmp_path / "tiny_seg.safetensors")
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "executorch", "--scheme", "int8-weight", "-o",
                                   str(tmp_path / "a"), "--input-size", "64x48", "--max-batch", "1"])
    assert res.exit_code == 0, res.output
    m = read_manifest(tmp_path / "a")
    assert m.precision == "int8-weight" and m.fidelity["rel_l2"] <= m.fidelity["tolerance"]
    assert m.quantization["export"]["xnnpack_linears"] == {"qd8-f32-qc8w": 18}


@pytest.mark.slow  # XNNPACK lowering
def test_fp16_program_keeps_large_head_maps_finite(tmp_path):
    # at 512x384 the head's instance norms reduce 196608 pixels per channel: in float16 ExecuTorch's
    # portable reduction overflows to inf, so the fp16 program computes them in float32
    model = tiny_model("seg", arch=SMALL, seed=7)
    out = export(model, tmp_path / "fp16", format="executorch", precision="fp16", input_size=(512, 384), max_batch=1)
    m = read_manifest(out)
    assert np.isfinite(m.fidelity["rel_l2"]) and m.fidelity["rel_l2"] <= m.fidelity["tolerance"] == 2e-2


def test_undelegated_names_the_linear_ops_left_outside_the_delegate():
    from sapiens2_edge.exporters.executorch_export import undelegated

    ep = torch.export.export(nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval(), (torch.zeros(2, 8),))
    assert undelegated(ep.graph) == ["linear"]  # nothing lowered: the linear would run in portable kernels
    ep = torch.export.export(nn.ReLU().eval(), (torch.zeros(2, 8),))
    assert undelegated(ep.graph) == []
