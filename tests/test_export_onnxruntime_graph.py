"""ONNX graphs shaped for ONNX Runtime (its fused MultiHeadAttention, the head's transposed convolutions as
sub-pixel convolutions) by default, standard operators with graph="standard"; both compute what the torch
model computes."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

import sapiens2_edge as s2e
from sapiens2_edge.errors import ConfigError
from sapiens2_edge.exporters import export, read_manifest, verification_inputs
from sapiens2_edge.exporters.onnxruntime_graph import ExportAttentionProduct, graph_form, onnxruntime_graph
from sapiens2_edge.exporters.parity_deconv import ParityHead, PhasedDeconv, parity_head, pooled_norm_silu
from sapiens2_edge.models.backbone import RMSNorm
from sapiens2_edge.models.heads import DeconvHead
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
                               graph="standard")}


def deconvolutions(model) -> int:
    return sum(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())


def graph_ops(root):
    import onnx

    return onnx.load(str(root / "model.onnx")).graph.node


def test_onnxruntime_form_computes_what_the_model_computes(model):
    """The export forms (attention: grouped heads repeated, one product over (B, T, heads x d); the head's
    deconvolutions as four parity convolutions, the last one's parity maps apart to the head's output)
    against the model's own code; the tiny arch has grouped key/value heads in its middle blocks."""
    assert any(kv < model.arch.num_heads for kv in model.arch.kv_heads)
    deconvs = [m for m in model.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    norms = sum(type(m) is RMSNorm for m in model.modules())
    head = model.decode_head
    x = torch.from_numpy(verification_inputs(INPUT, 2, seed=3))
    with torch.no_grad():
        want = model(x)
        with onnxruntime_graph(model, "onnxruntime") as n:
            assert n == {"attention": model.arch.depth, "norm": norms, "parity head": 1, "deconvolution": len(deconvs)}
            assert not any(type(m) is RMSNorm for m in model.modules())
            assert len(deconvs) == 4 and isinstance(model.decode_head, ParityHead)
            assert all(isinstance(b.attn.product, ExportAttentionProduct) for b in model.backbone.blocks)
            assert not any(b.attn.rope_gather for b in model.backbone.blocks)  # RoPE's halves: Split + Concat
            assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())
            got = model(x)
    assert all(b.attn.product is None and b.attn.rope_gather for b in model.backbone.blocks)  # given back
    assert sum(type(m) is RMSNorm for m in model.modules()) == norms
    assert model.decode_head is head and [m for m in model.modules() if isinstance(m, torch.nn.ConvTranspose2d)] == deconvs
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with onnxruntime_graph(model, "standard") as n:
        assert n == {} and all(b.attn.product is None for b in model.backbone.blocks)


@pytest.mark.parametrize("bias", [False, True])
def test_phased_deconvolution_is_the_transposed_convolution(bias):
    """Against torch's ConvTranspose2d on a non-square input with a random kernel: every output pixel."""
    torch.manual_seed(0)
    deconv = torch.nn.ConvTranspose2d(5, 3, 4, stride=2, padding=1, bias=bias)
    x = torch.randn(2, 5, 7, 4)
    with torch.no_grad():
        want, got = deconv(x), PhasedDeconv(deconv)(x)
    assert got.shape == want.shape == (2, 3, 14, 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_phased_int8_deconvolution_is_the_int8_deconvolution():
    """An int8 transposed convolution (int8 kernel, per-output-channel scales, the input rounded to int8 with its
    scale) in its ONNX form and as four parity convolutions of the int8 kernel's slices, against the quantized
    model's own layer on a non-square batch of 2: every output pixel."""
    from sapiens2_edge.exporters.onnx_quant import ExportQuantDeconv
    from sapiens2_edge.exporters.parity_deconv import PhasedQuantDeconv, phased_quant
    from sapiens2_edge.quantization.head_int8 import QuantDeconv

    torch.manual_seed(2)
    q = QuantDeconv.from_float(torch.nn.ConvTranspose2d(5, 3, 4, stride=2, padding=1, bias=False), input_amax=2.5)
    export_form = ExportQuantDeconv(q)
    assert phased_quant(export_form) and not phased_quant(q)
    x = torch.randn(2, 5, 7, 4) * 1.5  # some inputs past the calibrated range: clipped alike
    with torch.no_grad():
        want, got = q(x), PhasedQuantDeconv(export_form)(x)
    assert got.shape == want.shape == (2, 3, 14, 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("task", ["seg", "pose"])
def test_parity_head_is_the_head(task):
    """The whole pose / seg head (random weights, biased last deconvolution, batch of 2, non-square) against
    itself in the parity form: every output pixel."""
    torch.manual_seed(1)
    head = tiny_model(task, seed=4).decode_head.eval()
    last = head.deconv_layers[-3]
    last.bias = torch.nn.Parameter(torch.randn(last.out_channels))
    assert parity_head(head)
    x = torch.randn(2, head.deconv_layers[0].in_channels, 5, 3)
    with torch.no_grad():
        want, got = head(x), ParityHead(head)(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_pooled_norm_is_the_instance_norm_of_the_interleaved_image():
    """Hand-made maps: each channel normalised over all four maps' pixels (not per map), then SiLU."""
    maps = [torch.full((1, 2, 2, 2), v) for v in (0.0, 1.0, 2.0, 3.0)]
    maps[3][0, 1] = 7.0  # channel 1: 0, 1, 2, 7 (four pixels each)
    got = pooled_norm_silu(maps)
    for c, values in ((0, torch.tensor([0.0, 1.0, 2.0, 3.0])), (1, torch.tensor([0.0, 1.0, 2.0, 7.0]))):
        z = (values - values.mean()) / torch.sqrt(values.var(unbiased=False) + 1e-5)
        want = z * torch.sigmoid(z)
        for i in range(4):
            torch.testing.assert_close(got[i][0, c], want[i].expand(2, 2))


def test_quantized_heads_keep_their_form(model, tmp_path):
    """An int8 head (its transposed convolutions quantized) is no float head: the parity form leaves it."""
    calibration = [torch.randn(2, 3, *INPUT, generator=torch.Generator().manual_seed(0))]
    q, _ = s2e.quantize(model, "int8", calibration=calibration, input_size=INPUT, head="int8", progress=False)
    assert isinstance(model.decode_head, DeconvHead) and parity_head(model.decode_head)
    assert not parity_head(q.decode_head)
    with onnxruntime_graph(q, "onnxruntime") as n:
        assert n["parity head"] == 0 and not isinstance(q.decode_head, ParityHead)
    # exported for ONNX Runtime, its int8 transposed convolutions are parity convolutions too (no ConvTranspose
    # and its column buffer), holding the same values as the quantized model
    root = export(q, tmp_path / "int8-head", format="onnx", input_size=INPUT, max_batch=1)
    ops = collections.Counter(n.op_type for n in graph_ops(root))
    assert ops["ConvTranspose"] == 0 and ops["Conv"] >= 4 * deconvolutions(model), ops
    assert read_manifest(root).fidelity["rel_l2"] <= 0.05


def test_default_graph_is_shaped_for_onnxruntime(artifacts, model):
    nodes = graph_ops(artifacts["onnxruntime"])
    mha = [n for n in nodes if n.op_type == "MultiHeadAttention"]
    assert len(mha) == model.arch.depth and {n.domain for n in mha} == {"com.microsoft"}
    assert {a.i for n in mha for a in n.attribute if a.name == "num_heads"} == {model.arch.num_heads}
    assert not any(n.op_type == "Softmax" for n in nodes)  # no (T, T) scores in the graph
    ops = collections.Counter(n.op_type for n in nodes)
    assert ops["ConvTranspose"] == 0 and ops["Conv"] >= 4 * deconvolutions(model)  # four parity convolutions each
    # the norms after the last deconvolution are pooled over its parity maps (no InstanceNormalization)
    assert ops["InstanceNormalization"] == deconvolutions(model) - 1
    # RoPE swaps q's and k's halves by Split + Concat (no Gather); the SwiGLU's gate and up are two GEMMs
    assert ops["Split"] == 2 * model.arch.depth and ops["Gather"] == 0
    m = read_manifest(artifacts["onnxruntime"])
    assert m.options["graph"] == "onnxruntime" and m.fidelity["rel_l2"] <= 1e-4  # "auto", resolved


def test_onnxruntime_runs_each_norm_as_one_fused_operator(artifacts, model, tmp_path):
    """Every RMSNorm of the default graph becomes one SimplifiedLayerNormalization in the graph ONNX Runtime
    runs; the standard graph's (a Reciprocal of the root mean square, then products) is left in pieces."""
    import onnx

    from sapiens2_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend

    norms = sum(type(m) is RMSNorm for m in model.modules())
    ops = {}
    for form in ("onnxruntime", "standard"):
        OnnxRuntimeBackend(artifacts[form] / "model.onnx", providers=["CPUExecutionProvider"],
                           optimized_path=tmp_path / f"{form}.onnx")
        ops[form] = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / f"{form}.onnx")).graph.node)
    assert ops["onnxruntime"]["SimplifiedLayerNormalization"] == norms
    assert ops["standard"]["SimplifiedLayerNormalization"] == 0
    assert ops["standard"]["Reciprocal"] >= norms  # one per norm, unfused


def test_standard_graph_keeps_standard_operators_and_the_same_outputs(artifacts, model):
    ops = collections.Counter(n.op_type for n in graph_ops(artifacts["standard"]))
    assert ops["Softmax"] == model.arch.depth and ops["MultiHeadAttention"] == 0
    assert ops["ConvTranspose"] == deconvolutions(model) and ops["Split"] == model.arch.depth
    assert read_manifest(artifacts["standard"]).options["graph"] == "standard"
    x = verification_inputs(INPUT, 2, seed=5)
    outs = {}
    for form, root in artifacts.items():
        for backend in ("onnxruntime", "openvino"):  # OpenVINO's ONNX reader takes the fused operator too
            outs[form, backend] = open_artifact(root, backend, "cpu")[1](x)[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    for key, got in outs.items():
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4, key


def test_graph_form_is_checked_before_any_work(model, tmp_path, monkeypatch):
    import sapiens2_edge.quantization.api as qapi

    monkeypatch.setattr(qapi, "quantize", lambda *a, **k: pytest.fail("quantized before the option check"))
    with pytest.raises(ConfigError, match="onnx option graph='flash' is not supported; expected one of "
                                          "'auto', 'onnxruntime', 'standard'"):
        s2e.export(model, tmp_path / "a", format="onnx", scheme="int8", graph="flash")
    with pytest.raises(ConfigError, match="ort option opset=19 is not supported; expected one of 18, 23"):
        s2e.export(model, tmp_path / "b", format="ort", opset=19)
    with pytest.raises(ConfigError, match="unknown export option 'graph' for format 'openvino'"):
        s2e.export(model, tmp_path / "c", format="openvino", graph="standard")
    assert not any(tmp_path.iterdir())


def test_auto_keeps_standard_operators_for_tensorrt_graphs(model, tmp_path):
    """fp8 graphs are made for TensorRT, whose ONNX parser has no contrib operators."""
    q8, _ = s2e.quantize(model, "fp8", progress=False)
    assert graph_form(model, "auto") == "onnxruntime" and graph_form(q8, "auto") == "standard"
    assert graph_form(q8, "onnxruntime") == "onnxruntime"  # asked for: kept
    root = export(q8, tmp_path / "fp8", format="onnx", input_size=INPUT, max_batch=1)
    m = read_manifest(root)
    assert m.precision == "fp8" and m.options["graph"] == "standard"
    ops = collections.Counter(n.op_type for n in graph_ops(root))
    assert ops["MultiHeadAttention"] == 0 and ops["Softmax"] == model.arch.depth
    assert ops["ConvTranspose"] == deconvolutions(model)
    with pytest.raises(ConfigError, match="ONNX graph form 'fused' is not supported; expected one of auto, "):
        graph_form(model, "fused")


def test_4k_window_attention_is_fused_too(tmp_path):
    """The 4K tokenizer's windows (17 tokens each, one batch row per window) run the same operator."""
    from tests.fixtures.tiny import INPUT_4K, TINY_4K

    model = tiny_model("seg", arch=TINY_4K, seed=1)
    root = export(model, tmp_path / "4k", format="onnx", input_size=INPUT_4K, max_batch=1)
    ops = collections.Counter(n.op_type for n in graph_ops(root))
    assert ops["MultiHeadAttention"] == TINY_4K.depth + TINY_4K.tokenizer_depth and ops["Softmax"] == 0
    assert read_manifest(root).fidelity["rel_l2"] <= 1e-4
