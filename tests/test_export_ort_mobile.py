"""ONNX Runtime mobile (``format="ort"``): the ORT-format model and its minimal-build operator list,
checked against the torch model, through the Predictor, verify, and the command line."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import sapiens2_edge as s2e
from sapiens2_edge.bench import measure_row
from sapiens2_edge.cli import app
from sapiens2_edge.errors import ConfigError
from sapiens2_edge.exporters import compare, export, read_manifest, torch_outputs, verification_inputs
from sapiens2_edge.exporters.ort_export import CONFIG_FILE, ORT_FILE, check_model, read_config
from sapiens2_edge.quantization.config import layer_config
from sapiens2_edge.quantization.linear import QuantLinear
from sapiens2_edge.runtime.verify import verify_artifact
from tests.fixtures.quant_layers import int4_gemms
from tests.fixtures.synthetic import make_people
from tests.fixtures.tiny import save, tiny_model

SIZE = (64, 48)
IMAGE = np.random.default_rng(1).integers(0, 256, (90, 70, 3), dtype=np.uint8)


def param_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@pytest.fixture(scope="module")
def seg():
    return tiny_model("seg", seed=3)


@pytest.fixture(scope="module")
def seg_ort(seg, tmp_path_factory):
    return export(seg, tmp_path_factory.mktemp("ort") / "seg-fp32", format="ort", input_size=SIZE, max_batch=2)


def test_ort_artifact_matches_torch_and_lists_its_operators(seg, seg_ort):
    m = read_manifest(seg_ort)
    assert (m.format, m.precision, m.input_size) == ("ort", "fp32", list(SIZE))
    assert set(m.files) == {ORT_FILE, CONFIG_FILE, "reference.npz"}
    assert m.fidelity["rel_l2"] <= m.fidelity["tolerance"] == 1e-3
    blob = (seg_ort / ORT_FILE).read_bytes()
    assert blob[4:8] == b"ORTM"  # the ORT-format flatbuffer identifier, not an ONNX protobuf
    assert 0.9 < len(blob) / param_bytes(seg) < 1.3  # fp32 weights, stored once
    ops = read_config(seg_ort / CONFIG_FILE)
    assert "MatMul" in ops["ai.onnx;13"] and "Conv" in ops["ai.onnx;11"]
    # each attention is ONNX Runtime's fused operator, so a minimal build must carry it
    assert "MultiHeadAttention" in ops["com.microsoft;1"] and m.options["graph"] == "onnxruntime"
    assert m.options["ort_mobile"]["operators"] == ops
    assert m.options["ort_mobile"]["converter"]["target_platform"] == "arm"
    # the runtime runs the saved file, independently of the export's check
    x = verification_inputs(SIZE, batch=2, seed=5)
    pred = s2e.Predictor(seg_ort)
    assert pred.backend == "onnxruntime"
    assert compare(torch_outputs(seg, x), pred.runner(x), ["logits"])["rel_l2"] < 1e-3
    ref = s2e.Predictor(seg, input_size=SIZE)
    assert np.mean(pred(IMAGE).labels == ref(IMAGE).labels) > 0.999
    assert verify_artifact(seg_ort)["passed"]
    row = measure_row(str(seg_ort), "auto", warmup=0, runs=1, batch=1)  # what `sapiens2-edge bench` times
    assert row["backend"] == "onnxruntime" and row["size_mb"] * 1e6 >= len(blob) and row["median_s"] > 0


def test_ort_refuses_fp8_layers_and_oversized_weights():
    class Fp8(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = QuantLinear.from_float(nn.Linear(16, 16), layer_config("fp8", activation_mode="dynamic"), 0,
                                               torch.tensor([0.1]))

    with pytest.raises(ConfigError, match=r"layer proj is fp8 \(E4M3\).*carries fp32, int8-weight, int4-weight, int8"):
        check_model(Fp8(), "mixed")
    with pytest.raises(ConfigError, match="ort precision 'fp8' is not supported"):
        check_model(Fp8(), "fp8")
    huge = types.SimpleNamespace(named_modules=lambda: [], arch=types.SimpleNamespace(name="1b"),
                                 state_dict=lambda: {"w": torch.empty(600_000_000, device="meta")})
    with pytest.raises(ConfigError, match="at most 2 GiB.*quantize it"):
        check_model(huge, "fp32")
    with pytest.raises(ConfigError, match="ort precision 'fp16' is not supported.*no fp16 kernels"):
        check_model(Fp8(), "fp16")
    with pytest.raises(ConfigError, match="cannot carry quantization scheme 'fp8'"):
        export(tiny_model("seg"), "unused", format="ort", scheme="fp8")


@pytest.mark.slow  # two quantized exports: minutes on a small machine
@pytest.mark.parametrize("scheme", ["int8-weight", "int8"])
def test_ort_int8_keeps_int8_kernels_and_matches_torch(seg, scheme, tmp_path):
    calib = list(make_people(8, seed=1001, size=SIZE)[0])
    root = export(seg, tmp_path / scheme, format="ort", scheme=scheme, calibration=calib, input_size=SIZE, max_batch=2,
                  quantize_options={"progress": False, "activation_mode": "static"} if scheme == "int8" else None)
    m = read_manifest(root)
    assert m.precision == scheme and m.fidelity["rel_l2"] <= m.fidelity["tolerance"]
    ops = {op for names in read_config(root / CONFIG_FILE).values() for op in names}
    # the converter kept the quantized forms: int8 weights with float activations as MatMulNBits, and
    # static int8 activations as the int8 GEMM (com.microsoft MatMulIntegerToFloat, int8 weights inside)
    assert ("MatMulNBits" if scheme == "int8-weight" else "MatMulIntegerToFloat") in ops
    assert (root / ORT_FILE).stat().st_size < 0.6 * param_bytes(seg)  # int8 backbone weights
    assert m.fidelity["vs_float"]["artifact"]


@pytest.mark.slow  # an ONNX export and conversion through the command line
def test_cli_export_ort(tmp_path):
    ckpt = save(tiny_model("seg"), tmp_path / "tiny_seg.safetensors")
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "ort", "-o", str(tmp_path / "a"),
                                   "--input-size", "64x48", "--max-batch", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a" / ORT_FILE).exists() and (tmp_path / "a" / CONFIG_FILE).exists()
    res = CliRunner().invoke(app, ["verify", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output


def ort_graph(path):
    """The graph of an ORT-format file, read with the flatbuffer bindings onnxruntime ships (its
    ``tools.ort_format_model`` package puts ``ort_flatbuffers_py`` on sys.path: nothing else to install)."""
    import onnxruntime.tools.ort_format_model  # noqa: F401
    from ort_flatbuffers_py.fbs.InferenceSession import InferenceSession

    return InferenceSession.GetRootAs(path.read_bytes(), 0).Model().Graph()


def read_ort_graph(path):
    """(MatMulNBits nodes as (inputs, attributes), {initializer: (shape, raw bytes)}) from an ORT-format file."""
    graph = ort_graph(path)
    inits = {}
    for i in range(graph.InitializersLength()):
        t = graph.Initializers(i)
        inits[t.Name().decode()] = (tuple(int(d) for d in t.DimsAsNumpy()), t.RawDataAsNumpy().tobytes())
    nodes = []
    for i in range(graph.NodesLength()):
        n = graph.Nodes(i)
        if n.OpType() == b"MatMulNBits":
            assert n.Domain() == b"com.microsoft"
            nodes.append(([n.Inputs(j).decode() for j in range(n.InputsLength())],
                          {n.Attributes(k).Name().decode(): n.Attributes(k).I() for k in range(n.AttributesLength())}))
    return nodes, inits


@pytest.mark.slow  # a quantized export and conversion: ~30 s on a small machine
def test_ort_int4_keeps_matmulnbits_with_our_values(seg, tmp_path):
    from sapiens2_edge.quantization import quantize

    qmodel, _ = quantize(seg, "int4-weight")
    root = export(qmodel, tmp_path / "int4", format="ort", input_size=SIZE, max_batch=2)
    m = read_manifest(root)
    assert m.precision == "int4-weight" and m.fidelity["rel_l2"] <= m.fidelity["tolerance"] == 1e-3
    assert "MatMulNBits" in read_config(root / CONFIG_FILE)["com.microsoft;1"]
    # the saved graph: one MatMulNBits per int4 layer, B our packed bytes and scales our group scales
    nodes, inits = read_ort_graph(root / ORT_FILE)
    ours = {n: mod for n, mod in qmodel.named_modules() if isinstance(mod, QuantLinear)}
    by_bytes = {w.tobytes(): (w, sc, k) for w, sc, k in int4_gemms(qmodel)}  # the SwiGLU's w12 as two GEMMs
    assert len(nodes) == len(by_bytes) == len(ours) + qmodel.arch.depth
    for inputs, attrs in nodes:
        (b_shape, b), (_, scales) = inits[inputs[1]], inits[inputs[2]]
        w, sc, k = by_bytes.pop(b)
        assert b_shape == (w.shape[0], k // 32, 16)
        assert scales == np.ascontiguousarray(sc).tobytes()
        assert {a: attrs[a] for a in ("K", "N", "bits", "block_size", "accuracy_level")} == {
            "K": k, "N": w.shape[0], "bits": 4, "block_size": 32, "accuracy_level": 1}
    assert not by_bytes
    # the runtime runs the saved file like the torch QuantizedModel
    x = verification_inputs(SIZE, batch=2, seed=5)
    assert compare(torch_outputs(qmodel, x), s2e.Predictor(root).runner(x), ["logits"])["rel_l2"] < 1e-4


def ort_graph_summary(path):
    """(op type counts, initializer element type counts) of an ORT-format file."""
    import collections

    graph = ort_graph(path)
    ops = collections.Counter(graph.Nodes(i).OpType().decode() for i in range(graph.NodesLength()))
    types = collections.Counter(graph.Initializers(i).DataType() for i in range(graph.InitializersLength()))
    return ops, types
