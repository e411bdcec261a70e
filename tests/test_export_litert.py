"""The ``litert`` export format (LiteRT / TFLite ``model.tflite`` through litert-torch) and its
interpreter backend: outputs against torch, our int8 weights bit for bit, sizes, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sapiens2_edge as s2e
from sapiens2_edge.cli import app
from sapiens2_edge.errors import BackendUnavailableError, ConfigError
from sapiens2_edge.exporters import export, read_manifest, verification_inputs
from sapiens2_edge.exporters.litert_export import check_int8_weights, inspect_file
from sapiens2_edge.models.arch import ArchSpec
from sapiens2_edge.models.model import build_model
from sapiens2_edge.runtime import open_artifact
from tests.fixtures.compare import rel_l2
from tests.fixtures.tiny import HEADS, INPUT, POINTMAP_INPUT, save

# Three blocks, the middle one grouped-query (2 kv heads for 4 query heads): small and still GQA.
ARCH = ArchSpec(64, 3, 4, (4, 2, 4), 256, name="tiny-gqa3")
MODEL = "model.tflite"
cli = CliRunner()


def torch_run(model, x: np.ndarray) -> tuple[np.ndarray, ...]:
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    return tuple(o.numpy() for o in (out if isinstance(out, tuple) else (out,)))


def linear_elements(model) -> int:
    return sum(m.decompose().weight.numel() for m in model.modules() if hasattr(m, "decompose"))


def param_bytes(model) -> int:
    return sum(t.numel() * 4 for t in model.state_dict().values())


@pytest.fixture(scope="module")
def model():
    return build_model(ARCH, head=HEADS["seg"], seed=4).eval()


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    return save(model, tmp_path_factory.mktemp("ck") / "seg.safetensors")


@pytest.fixture(scope="module")
def fp32(ckpt, tmp_path_factory):
    """The float artifact, made by the CLI from a checkpoint file."""
    out = tmp_path_factory.mktemp("lt") / "seg-litert"
    res = cli.invoke(app, ["export", str(ckpt), "--format", "litert", "-o", str(out), "--input-size", "128x96",
                           "--max-batch", "3"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def int8_weight(model, tmp_path_factory):
    qmodel, _ = s2e.quantize(model, "int8-weight", progress=False)
    root = export(qmodel, tmp_path_factory.mktemp("lt") / "seg-int8", format="litert", input_size=INPUT, max_batch=3)
    return qmodel, root


def test_cli_export_manifest_and_fidelity(fp32):
    m = read_manifest(fp32)
    assert (m.format, m.task, m.precision, m.input_size, m.max_batch) == ("litert", "seg", "fp32", [128, 96], 3)
    assert {k: v["role"] for k, v in m.files.items()} == {MODEL: "model", "reference.npz": "reference"}
    # measured 2e-6: the graph keeps the reference's bf16 RoPE rounding as CAST ops
    assert m.fidelity["rel_l2"] <= 1e-5 and m.fidelity["tolerance"] == 1e-3
    lt = m.options["litert"]
    assert lt["graph_batch"] == 1 and lt["file"]["input_shape"] == [1, 3, 128, 96]
    assert lt["file"]["weight_dtypes"].get("float16", 0) == 0 and lt["file"]["int8_weights"] == 0


def test_float_file_size(fp32, model):
    # fp32 weights plus the frozen RoPE tables and small constants
    size = (fp32 / MODEL).stat().st_size
    assert param_bytes(model) <= size <= 1.25 * param_bytes(model) + 300_000


def test_backend_matches_torch_on_a_fresh_batch(fp32, model):
    manifest, runner, reason = open_artifact(fp32)
    assert runner.name == "litert" and reason.startswith("auto")
    x = verification_inputs(INPUT, batch=3, seed=7)  # 3 images through the batch-1 graph
    (got,), (want,) = runner(x), torch_run(model, x)
    assert got.shape == want.shape == (3, 29, *INPUT)
    assert rel_l2(want, got) <= 1e-5
    assert rel_l2(want[1:2], runner(x[1:2])[0]) <= 1e-5


def test_predictor_and_cli_verify(fp32, ckpt):
    image = np.random.default_rng(3).integers(0, 256, (150, 110, 3), dtype=np.uint8)
    pred = s2e.Predictor(fp32, device="cpu")
    assert pred.backend == "litert"
    ref = s2e.Predictor(ckpt, backend="torch", device="cpu", input_size=INPUT)
    assert (pred(image).labels == ref(image).labels).mean() >= 0.999
    res = cli.invoke(app, ["verify", str(fp32), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["passed"] and out["backend"] == "litert" and out["rel_l2"] <= 1e-5


def test_int8_weights_are_ours_bit_for_bit(int8_weight, fp32):
    qmodel, root = int8_weight
    m = read_manifest(root)
    assert m.precision == "int8-weight" and m.fidelity["rel_l2"] <= 1e-5  # against the torch QuantizedModel
    assert m.options["litert"]["int8_check"] == {"int8_weights_matched": 18, "bit_exact": True}
    # read back independently through the interpreter: every int8 constant is one of ours, with its scales
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(root / MODEL))
    ours = {}
    for mod in qmodel.modules():
        if hasattr(mod, "decompose"):
            d = mod.decompose()
            ours[d.weight.numpy().tobytes()] = d.channel_scales().numpy()
    found = 0
    for t in it.get_tensor_details():
        if t["dtype"] == np.int8 and len(t["shape"]) == 2:
            data = it.get_tensor(t["index"])
            scales = t["quantization_parameters"]["scales"]
            assert np.array_equal(scales, ours[data.tobytes()]), t["name"]
            found += 1
    assert found == len(ours) == 18
    # each int8 weight saves 3 bytes of its fp32 (less 4 bytes of scale per output channel)
    saved = (fp32 / MODEL).stat().st_size - (root / MODEL).stat().st_size
    assert saved >= 0.9 * 3 * linear_elements(qmodel)
    x = verification_inputs(INPUT, batch=2, seed=5)
    assert rel_l2(torch_run(qmodel, x)[0], open_artifact(root)[1](x)[0]) <= 1e-5


def test_int8_check_catches_a_foreign_weight(int8_weight, model):
    qmodel, root = int8_weight
    int8 = inspect_file(root / MODEL)["_int8"]
    other, _ = s2e.quantize(build_model(ARCH, head=HEADS["seg"], seed=6), "int8-weight", progress=False)
    with pytest.raises(Exception, match="equals none of the model's int8 weights"):
        check_int8_weights(int8, other)
    with pytest.raises(Exception, match="holds 0 int8 weights, the model has 18"):
        check_int8_weights([], qmodel)
    name, data, scales, axis = int8[0]
    with pytest.raises(Exception, match="does not carry the layer's scales"):
        check_int8_weights([(name, data, scales * 1.01, axis), *int8[1:]], qmodel)


def test_unsupported_schemes_are_refused_naming_the_layer(model, tmp_path):
    dynamic, _ = s2e.quantize(model, "int8", progress=False)
    with pytest.raises(ConfigError, match=r"layer backbone\.blocks\.0\.attn\.wq: LiteRT cannot run its "
                                          r"int8/dynamic activation quantization"):
        export(dynamic, tmp_path / "dyn", format="litert", input_size=INPUT)
    calib = [torch.from_numpy(verification_inputs(INPUT, 1, seed=1))]
    attention, _ = s2e.quantize(model, "int8-weight", calibration=calib, input_size=INPUT, attention="int8",
                                progress=False)
    with pytest.raises(ConfigError, match=r"3 attentions have int8 inputs \(recipe attention='int8'\), which the "
                                          r"litert format does not carry"):
        export(attention, tmp_path / "att", format="litert", input_size=INPUT)
    with pytest.raises(ConfigError, match="a litert artifact cannot carry quantization scheme 'fp8'"):
        export(model, tmp_path / "fp8", format="litert", scheme="fp8", input_size=INPUT)
    with pytest.raises(ConfigError, match="litert precision 'bf16' is not supported"):
        export(model, tmp_path / "bf16", format="litert", precision="bf16", input_size=INPUT)
    res = cli.invoke(app, ["export", "x.safetensors", "--format", "litert", "--scheme", "int8", "-o", str(tmp_path / "c"),
                           "--calib", str(tmp_path)])
    assert res.exit_code != 0 and "a litert artifact cannot carry scheme int8" in " ".join(res.output.split())
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_missing_runtime_and_converter_give_install_hints(fp32, model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'sapiens2-edge\[litert\]'"):
        s2e.Predictor(fp32)
    with pytest.raises(BackendUnavailableError, match=r"backend 'litert' is not installed: "
                                                      r"pip install 'sapiens2-edge\[litert\]'"):
        s2e.Predictor(fp32, backend="litert")
    from sapiens2_edge.runtime.litert_backend import LiteRTBackend

    with pytest.raises(BackendUnavailableError, match=r"LiteRT interpreter \(ai-edge-litert\): pip install"):
        LiteRTBackend(fp32 / MODEL)
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    with pytest.raises(BackendUnavailableError, match=r"needs the converter litert-torch: "
                                                      r"pip install 'sapiens2-edge\[litert-export\]'"):
        export(model, tmp_path / "x", format="litert", input_size=INPUT)
    ckpt = save(model, tmp_path / "m.safetensors")
    res = cli.invoke(app, ["export", str(ckpt), "--format", "litert", "-o", str(tmp_path / "y")])
    assert res.exit_code != 0 and 'pip install "sapiens2-edge[litert-export]"' in " ".join(res.output.split())


def test_litert_backend_imports_no_torch():
    code = "import sys, sapiens2_edge.runtime.litert_backend; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_fp16_weights(model, fp32, tmp_path):
    root = export(model, tmp_path / "fp16", format="litert", precision="fp16", input_size=INPUT, max_batch=2)
    m = read_manifest(root)
    assert m.precision == "fp16" and m.fidelity["rel_l2"] <= 2e-2
    dtypes = m.options["litert"]["file"]["weight_dtypes"]
    assert dtypes.get("float16", 0) >= 18
    linears = sum(m.weight.numel() for m in model.backbone.modules() if isinstance(m, torch.nn.Linear))
    assert (fp32 / MODEL).stat().st_size - (root / MODEL).stat().st_size >= 0.95 * 2 * linears


@pytest.mark.slow
def test_two_outputs_in_order(tmp_path):
    """pointmap returns (pointmap, scale): the runner gives them in the torch model's order."""
    pm = build_model(ARCH, head=HEADS["pointmap"], seed=2).eval()
    root = export(pm, tmp_path / "pm", format="litert", input_size=POINTMAP_INPUT, max_batch=1)
    x = verification_inputs(POINTMAP_INPUT, batch=1, seed=3)
    got, want = open_artifact(root)[1](x), torch_run(pm, x)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert all(rel_l2(w, g) <= 1e-4 for w, g in zip(want, got, strict=True))


def test_cli_bench_runs_it(fp32, tmp_path):
    res = cli.invoke(app, ["bench", str(fp32), "--runs", "1", "--no-baseline", "--output-dir", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert row["backend"] == "litert" and row["median_s"] > 0 and row["fidelity_rel_l2"] <= 1e-5
