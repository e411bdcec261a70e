"""The attention of ONNX graphs: ONNX Runtime's fused MultiHeadAttention by default, standard operators
with attention_op="standard"; both compute what the torch model computes."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

import sapiens2_edge as s2e
from sapiens2_edge.errors import ConfigError
from sapiens2_edge.exporters import export, read_manifest, verification_inputs
from sapiens2_edge.exporters.onnx_attention import ExportAttentionProduct, attention_form, fused_attention
from sapiens2_edge.runtime import open_artifact
from tests.fixtures.tiny import INPUT, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("seg", seed=2)


@pytest.fixture(scope="module")
def artifacts(model, tmp_path_factory):
    base = tmp_path_factory.mktemp("attention")
    return {"onnxruntime": export(model, base / "default", format="onnx", input_size=INPUT, max_batch=2),
            "standard": export(model, base / "standard", format="onnx", input_size=INPUT, max_batch=2,
                               attention_op="standard")}


def graph_ops(root):
    import onnx

    return onnx.load(str(root / "model.onnx")).graph.node


def test_fused_product_computes_the_models_attention(model):
    """The export form (grouped heads repeated, one product over (B, T, heads x d)) against the model's
    own scaled_dot_product_attention path; the tiny arch has grouped key/value heads in its middle blocks."""
    assert any(kv < model.arch.num_heads for kv in model.arch.kv_heads)
    x = torch.from_numpy(verification_inputs(INPUT, 2, seed=3))
    with torch.no_grad():
        want = model(x)
        with fused_attention(model, "onnxruntime") as n:
            assert n == model.arch.depth
            assert all(isinstance(b.attn.product, ExportAttentionProduct) for b in model.backbone.blocks)
            got = model(x)
    assert all(b.attn.product is None for b in model.backbone.blocks)  # given back
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with fused_attention(model, "standard") as n:
        assert n == 0 and all(b.attn.product is None for b in model.backbone.blocks)


def test_default_graph_runs_each_attention_as_one_multi_head_attention(artifacts, model):
    nodes = graph_ops(artifacts["onnxruntime"])
    mha = [n for n in nodes if n.op_type == "MultiHeadAttention"]
    assert len(mha) == model.arch.depth and {n.domain for n in mha} == {"com.microsoft"}
    assert {a.i for n in mha for a in n.attribute if a.name == "num_heads"} == {model.arch.num_heads}
    assert not any(n.op_type == "Softmax" for n in nodes)  # no (T, T) scores in the graph
    m = read_manifest(artifacts["onnxruntime"])
    assert m.options["attention_op"] == "onnxruntime" and m.fidelity["rel_l2"] <= 1e-4  # "auto", resolved


def test_standard_graph_keeps_standard_operators_and_the_same_outputs(artifacts, model):
    ops = collections.Counter(n.op_type for n in graph_ops(artifacts["standard"]))
    assert ops["Softmax"] == model.arch.depth and ops["MultiHeadAttention"] == 0
    assert read_manifest(artifacts["standard"]).options["attention_op"] == "standard"
    x = verification_inputs(INPUT, 2, seed=5)
    outs = {}
    for form, root in artifacts.items():
        for backend in ("onnxruntime", "openvino"):  # OpenVINO's ONNX reader takes the fused operator too
            outs[form, backend] = open_artifact(root, backend, "cpu")[1](x)[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    for key, got in outs.items():
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4, key


def test_attention_form_is_checked_before_any_work(model, tmp_path, monkeypatch):
    import sapiens2_edge.quantization.api as qapi

    monkeypatch.setattr(qapi, "quantize", lambda *a, **k: pytest.fail("quantized before the option check"))
    with pytest.raises(ConfigError, match="onnx option attention_op='flash' is not supported; expected one of "
                                          "'auto', 'onnxruntime', 'standard'"):
        s2e.export(model, tmp_path / "a", format="onnx", scheme="int8", attention_op="flash")
    with pytest.raises(ConfigError, match="ort option opset=19 is not supported; expected one of 18, 23"):
        s2e.export(model, tmp_path / "b", format="ort", opset=19)
    with pytest.raises(ConfigError, match="unknown export option 'attention_op' for format 'openvino'"):
        s2e.export(model, tmp_path / "c", format="openvino", attention_op="standard")
    assert not any(tmp_path.iterdir())


def test_auto_keeps_standard_operators_for_tensorrt_graphs(model, tmp_path):
    """fp8 graphs are made for TensorRT, whose ONNX parser has no contrib operators."""
    q8, _ = s2e.quantize(model, "fp8", progress=False)
    assert attention_form(model, "auto") == "onnxruntime" and attention_form(q8, "auto") == "standard"
    assert attention_form(q8, "onnxruntime") == "onnxruntime"  # asked for: kept
    root = export(q8, tmp_path / "fp8", format="onnx", input_size=INPUT, max_batch=1)
    m = read_manifest(root)
    assert m.precision == "fp8" and m.options["attention_op"] == "standard"
    ops = collections.Counter(n.op_type for n in graph_ops(root))
    assert ops["MultiHeadAttention"] == 0 and ops["Softmax"] == model.arch.depth
    with pytest.raises(ConfigError, match="ONNX attention 'fused' is not supported; expected one of auto, "):
        attention_form(model, "fused")
