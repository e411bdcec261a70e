"""int4-weight: packing, hand-computed values, the checkpoint round trip, and the ONNX / OpenVINO /
Core ML files read back against our own int4 values and scales."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sapiens2_edge.artifact.formats import check_export_request  # noqa: E402
from sapiens2_edge.errors import ConfigError  # noqa: E402
from sapiens2_edge.kernels import numerics as nx  # noqa: E402
from sapiens2_edge.quantization import (  # noqa: E402
    Int4Weight,
    Mixed,
    QuantLinear,
    load_quantized,
    quantize,
    save_quantized,
)
from sapiens2_edge.quantization.config import DEFAULT_GROUP_SIZE, layer_config  # noqa: E402
from tests.fixtures.quant_layers import int4_gemms  # noqa: E402
from tests.fixtures.tiny import INPUT, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def seg():
    return tiny_model("seg")


@pytest.fixture(scope="module")
def q4(seg):
    return quantize(seg, "int4-weight")


# --- packing and values ----------------------------------------------------------------------------
def test_pack_unpack_round_trip_bit_exact():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-8, 8, (5, 64), generator=g, dtype=torch.int8)
    packed = nx.pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 32)
    assert torch.equal(nx.unpack_int4(packed), q)
    every = torch.arange(256, dtype=torch.uint8).reshape(2, 128)  # every byte unpacks and packs back
    assert torch.equal(nx.pack_int4(nx.unpack_int4(every)), every)


def test_packing_layout_by_hand():
    # element 2i in the low nibble, 2i+1 in the high one, each as q + 8
    q = torch.tensor([[-8, 7, 0, -1]], dtype=torch.int8)
    assert nx.pack_int4(q).tolist() == [[0xF0, 0x78]]


def test_dequantized_weight_equals_hand_computation():
    # one group of 32 inputs on the grid k * 0.25 (k in -7..7), one group scaled x3: absmax scale is
    # exactly 0.25 and 0.75, so every weight comes back exactly, with either scale method
    k = torch.tensor([(i % 15) - 7 for i in range(32)], dtype=torch.float32)
    w = torch.stack([torch.cat([k * 0.25, k * 0.75]), torch.cat([-k * 0.5, k * 0.0])])
    for search in (False, True):
        packed, scale = nx.quantize_int4(w, 32, search)
        assert scale.dtype == torch.float16 and scale.tolist() == [[0.25, 0.75], [0.5, 2.0 ** -14]]
        assert torch.equal(nx.unpack_int4(packed)[0, :32], k.to(torch.int8))
        assert torch.equal(nx.dequantize_int4(packed, scale), w)
    # a value between grid points: 0.3 / (0.7 / 7) = 3 -> 0.3 within float16 rounding of the scale
    w = torch.zeros(1, 32)
    w[0, 0], w[0, 1] = 0.7, 0.3
    packed, scale = nx.quantize_int4(w, 32, False)
    s = float(torch.tensor(0.1).half())
    assert float(scale[0, 0]) == s and nx.unpack_int4(packed)[0, :2].tolist() == [7, 3]
    assert nx.dequantize_int4(packed, scale)[0, :2].tolist() == pytest.approx([7 * s, 3 * s], abs=0)


def test_mse_scales_never_worse_and_better_overall():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 256, generator=g)
    plain = nx.dequantize_int4(*nx.quantize_int4(w, 32, False))
    searched = nx.dequantize_int4(*nx.quantize_int4(w, 32, True))
    err_plain = ((plain - w) ** 2).reshape(64, 8, 32).sum(-1)
    err_search = ((searched - w) ** 2).reshape(64, 8, 32).sum(-1)
    assert bool((err_search <= err_plain).all())
    assert nx.tensor_sqnr_db(w, searched) > nx.tensor_sqnr_db(w, plain) + 0.5


def test_quant_linear_forward_uses_the_dequantized_weight():
    lin = torch.nn.Linear(64, 32)
    layer = QuantLinear.from_float(lin, layer_config("int4-weight", group_size=16))
    assert layer.weight.shape == (32, 32) and layer.weight_scale.shape == (32, 4)
    x = torch.randn(2, 5, 64)
    ref = torch.nn.functional.linear(x, nx.dequantize_int4(layer.weight, layer.weight_scale), lin.bias)
    assert torch.equal(layer(x), ref)


@pytest.mark.parametrize("bad, message", [
    (lambda: Int4Weight(group_size=48), "group_size=48 is not supported; expected one of 16, 32, 64, 128, 256"),
    (lambda: Int4Weight(scale_method="gptq"), "scale_method='gptq' is not supported; expected one of 'mse', 'absmax'"),
    (lambda: QuantLinear(48, 8, layer_config("int4-weight", group_size=32)),
     "int4 group_size 32 does not divide this layer's 48 inputs"),
    (lambda: check_export_request("native", scheme="int4-weight"),
     "a native artifact cannot carry quantization scheme 'int4-weight'; native supports the schemes fp16, "
     "int8-weight, int8, mixed"),
])
def test_bad_int4_requests(bad, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        bad()


def test_config_object_and_string_agree(seg, q4):
    qmodel, report = q4
    same, _ = quantize(seg, Int4Weight(DEFAULT_GROUP_SIZE))
    a, b = qmodel.state_dict(), same.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert qmodel.recipe.scheme == "int4-weight" and qmodel.recipe.group_size == DEFAULT_GROUP_SIZE
    assert report.scheme == "int4-weight" and all(lr.weight_sqnr_db > 15 for lr in report.layers)
    mixed, _ = quantize(seg, Mixed(default=Int4Weight(64), layers={"backbone.blocks.0.*": "int8-weight"}))
    layers = mixed.quantized_layers()
    assert layers["backbone.blocks.0.attn.wq"].weight.dtype == torch.int8
    assert layers["backbone.blocks.1.attn.wq"].weight_scale.shape == (64, 1)


# --- checkpoint ------------------------------------------------------------------------------------
@pytest.mark.parametrize("storage", ["fp32", "fp16"])
def test_checkpoint_round_trip_bit_exact(seg, q4, tmp_path, storage):
    from sapiens2_edge.models.checkpoint import read_header

    qmodel, report = q4 if storage == "fp32" else quantize(seg, "int4-weight", float_storage="fp16")
    path = save_quantized(qmodel, tmp_path / "q.safetensors", report)
    header = read_header(path)
    assert header.tensors["backbone.blocks.3.ffn.w3.weight"].dtype == "U8"
    assert header.tensors["backbone.blocks.3.ffn.w3.weight"].shape == (64, 128)
    assert header.tensors["backbone.blocks.3.ffn.w3.weight_scale"].dtype == "F16"
    head = header.tensors["decode_head.conv_seg.weight"].dtype
    assert head == ("F16" if storage == "fp16" else "F32")
    back = load_quantized(path)
    a, b = qmodel.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(1, 3, *INPUT)
    with torch.no_grad():
        assert torch.equal(qmodel(x), back(x))


def test_int4_file_clearly_below_int8(seg, q4, tmp_path):
    int8, _ = quantize(seg, "int8-weight")
    n8 = save_quantized(int8, tmp_path / "int8.safetensors").stat().st_size
    n4 = save_quantized(q4[0], tmp_path / "int4.safetensors").stat().st_size
    n4h = save_quantized(quantize(seg, "int4-weight", float_storage="fp16")[0], tmp_path / "h.safetensors").stat().st_size
    # the tiny model's head and patch embedding are a large share; the backbone linears shrink 8/5x
    assert n4 < 0.8 * n8 and n4h < 0.6 * n8


def test_float_storage_fp16_rounds_what_stays_float(seg):
    qmodel, _ = quantize(seg, "int4-weight", float_storage="fp16")
    w = qmodel.decode_head.conv_seg.weight
    assert w.dtype == torch.float32 and torch.equal(w, w.half().float())
    assert not torch.equal(w, seg.decode_head.conv_seg.weight)


# --- exports ---------------------------------------------------------------------------------------
def _ours(qmodel):
    return {n: m for n, m in qmodel.named_modules() if isinstance(m, QuantLinear)}


@pytest.fixture(scope="module")
def onnx_artifact(q4, tmp_path_factory):
    import sapiens2_edge as s2e

    return s2e.export(q4[0], tmp_path_factory.mktemp("onnx") / "a", format="onnx", input_size=INPUT, max_batch=2)


def test_onnx_matmulnbits_holds_our_values(q4, onnx_artifact):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_artifact / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:  # the float16-stored scales, read through their Cast to float32
        if n.op_type == "Cast" and n.input[0] in inits:
            assert inits[n.input[0]].dtype == np.float16 and n.attribute[0].i == onnx.TensorProto.FLOAT
            inits[n.output[0]] = inits[n.input[0]].astype(np.float32)
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    ours = _ours(q4[0])
    gemms = int4_gemms(q4[0])  # the SwiGLU's w12 as two GEMMs
    assert len(nodes) == len(gemms) == len(ours) + q4[0].arch.depth and all(n.domain == "com.microsoft" for n in nodes)
    by_bytes = {w.tobytes(): (w, sc, k) for w, sc, k in gemms}
    for node in nodes:
        attrs = {a.name: a.i for a in node.attribute}
        b, scales = inits[node.input[1]], inits[node.input[2]]
        w, sc, k = by_bytes[b.tobytes()]  # B is our packed bytes, (N, K/G, G/2)
        assert b.shape == (w.shape[0], k // 32, 16) and b.dtype == np.uint8
        assert attrs == {"K": k, "N": w.shape[0], "bits": 4, "block_size": 32, "accuracy_level": 1}
        assert scales.dtype == np.float32 and np.array_equal(scales, sc.reshape(-1))
        assert len(node.input) == 3  # no zero points: the default 8 is our offset
    manifest = json.loads((onnx_artifact / "manifest.json").read_text())
    assert manifest["precision"] == "int4-weight" and manifest["fidelity"]["rel_l2"] <= 1e-3
    assert manifest["quantization"]["export"]["layers"] == {"int4-weight/none": len(ours)}


def test_onnx_runs_like_the_quantized_model(q4, onnx_artifact):
    from sapiens2_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend

    x = np.random.default_rng(3).standard_normal((2, 3, *INPUT)).astype(np.float32)
    (got,) = OnnxRuntimeBackend(onnx_artifact / "model.onnx", providers=["CPUExecutionProvider"])(x)
    with torch.no_grad():
        ref = q4[0](torch.from_numpy(x)).numpy()
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-4


def test_onnx_stores_float16_values_as_float16_and_computes_the_same(seg, tmp_path, monkeypatch):
    import shutil

    import onnx

    from sapiens2_edge.exporters import onnx_export
    from sapiens2_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend

    qmodel, _ = quantize(seg, "int4-weight", float_storage="fp16")
    (tmp_path / "half").mkdir()
    (tmp_path / "full").mkdir()
    half, full = (tmp_path / d / "model.onnx" for d in ("half", "full"))
    store = onnx_export.store_float16

    def keep_the_float32_graph(path, external):
        shutil.copy(path, full)  # the exporter's graph, before float16 storage
        store(path, external)
    monkeypatch.setattr(onnx_export, "store_float16", keep_the_float32_graph)
    onnx_export.export_onnx(qmodel, tmp_path / "half", INPUT, 2, 18, "int4-weight")
    monkeypatch.undo()
    assert full.exists()
    # the head, patch embedding, norms and every group scale: float16 behind a Cast, half the bytes
    stored = {t.name: t for t in onnx.load(str(half)).graph.initializer}
    float_bytes = sum(len(t.raw_data) for t in onnx.load(str(full)).graph.initializer if t.data_type == 1)
    fp16_bytes = sum(len(t.raw_data) for t in stored.values() if t.data_type == onnx.TensorProto.FLOAT16)
    assert 2 * fp16_bytes > 0.85 * float_bytes  # all but the int4 layers' biases (kept float32 by the recipe)
    assert full.stat().st_size - half.stat().st_size > 0.8 * fp16_bytes  # saved, less the Cast nodes' bytes
    assert stored["backbone.patch_embed.projection.weight__fp16"].data_type == onnx.TensorProto.FLOAT16
    assert not any(n.metadata_props for n in onnx.load(str(half)).graph.node)  # no per-node source locations
    x = np.random.default_rng(4).standard_normal((2, 3, *INPUT)).astype(np.float32)
    (a,) = OnnxRuntimeBackend(half, providers=["CPUExecutionProvider"])(x)
    (b,) = OnnxRuntimeBackend(full, providers=["CPUExecutionProvider"])(x)
    assert np.array_equal(a, b)  # the Casts are exact: the same numbers as the float32 graph
    from sapiens2_edge.quantization.model import stores_float16

    assert stores_float16(qmodel) and not stores_float16(seg) and not stores_float16(quantize(seg, "int4-weight")[0])
    check_ort_keeps_float16(qmodel, half, tmp_path, x, a)


def check_ort_keeps_float16(qmodel, onnx_path, tmp_path, x, expected):
    """The ORT mobile conversion of a float_storage="fp16" graph keeps the float16 tensors (behind their
    Casts) instead of float32 copies, runs the same ops otherwise, and computes bit-identical outputs."""
    import onnx

    from sapiens2_edge.exporters.ort_export import convert
    from sapiens2_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from tests.test_export_ort_mobile import ort_graph_summary

    halves = [i for i in onnx.load(str(onnx_path)).graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    paths = {}
    for keep in (False, True):
        paths[keep] = tmp_path / f"keep{keep}.ort"
        notes = convert(onnx_path, paths[keep], tmp_path / f"keep{keep}.config", keep_float16=keep)
        assert ("float16_initializers" in notes) is keep
        assert ("ConstantFolding" in notes["converter"]["disabled_optimizers"]) is keep
    (ops_f, types_f), (ops_k, types_k) = (ort_graph_summary(paths[k]) for k in (False, True))
    assert types_f[onnx.TensorProto.FLOAT16] == 0 and types_k[onnx.TensorProto.FLOAT16] == len(halves) > 0
    assert ops_k - ops_f == {"Cast": len(halves)} and not ops_f - ops_k  # the same graph plus one Cast per float16 tensor
    # each float16 tensor saves its own size (the float32 copy is twice that), less its Cast node (< 512 bytes)
    saved = paths[False].stat().st_size - paths[True].stat().st_size
    assert saved >= sum(len(i.raw_data) for i in halves) - 512 * len(halves) > 0
    for keep in (False, True):
        (got,) = OnnxRuntimeBackend(paths[keep], providers=["CPUExecutionProvider"])(x)
        assert np.array_equal(got, expected)


def test_openvino_ir_holds_our_u4_values(q4, tmp_path):
    import openvino as ov

    import sapiens2_edge as s2e

    root = s2e.export(q4[0], tmp_path / "ov", format="openvino", input_size=INPUT, max_batch=1)
    manifest = json.loads((root / "manifest.json").read_text())
    ours = _ours(q4[0])
    assert manifest["fidelity"]["rel_l2"] <= 1e-3
    # the FFN's fused gate/up projection is two GEMMs in graphs made for OpenVINO (exporters/gate_split.py)
    fused = [n for n in ours if n.endswith("ffn.w12")]
    assert fused
    assert manifest["quantization"]["export"]["runtime_precisions"]["FullyConnected u4"] == len(ours) + len(fused)
    model = ov.Core().read_model(str(root / "openvino" / "model.xml"))
    consts = {op.get_friendly_name(): op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"}
    for name, m in ours.items():
        rows = m.weight.shape[0]
        halves = ([(f"{name[:-3]}gate", slice(0, rows // 2)), (f"{name[:-3]}up", slice(rows // 2, rows))]
                  if name in fused else [(name, slice(0, rows))])
        for const_name, part in halves:
            c = consts[f"{const_name}.blocks"]
            assert str(c.get_element_type()) == "<Type: 'uint4_t'>"
            assert np.array_equal(c.get_data().reshape(-1), m.weight[part].numpy().reshape(-1))  # same nibble order
            sub = next(iter(next(iter(c.output(0).get_target_inputs())).get_node().output(0).get_target_inputs())).get_node()
            mul = next(iter(sub.output(0).get_target_inputs())).get_node()
            zero = sub.input(1).get_source_output().get_node().input(0).get_source_output().get_node()
            scale = mul.input(1).get_source_output().get_node()
            assert zero.get_data().reshape(-1)[0] & 0x0F == 8
            assert np.array_equal(scale.get_data().reshape(-1), m.weight_scale[part].float().numpy().reshape(-1))
    bin_bytes = (root / "openvino" / "model.bin").stat().st_size
    weights = sum(m.in_features * m.out_features for m in ours.values())
    floats = sum(p.numel() for n, p in q4[0].named_parameters())
    assert bin_bytes < weights * 0.5 + weights / 32 * 4 + floats * 4 + 300_000  # int4 + f32 scales + the rest


@pytest.mark.slow
def test_coreml_program_holds_our_int4_values(q4, tmp_path):
    import sapiens2_edge as s2e
    from sapiens2_edge.exporters.coreml_export import inspect_package

    root = s2e.export(q4[0], tmp_path / "cm", format="coreml", input_size=INPUT, max_batch=1)
    checks = json.loads((root / "manifest.json").read_text())["options"]["coreml"]
    n = len(_ours(q4[0]))
    assert checks["int4_weights"] == n and checks["int4_weights_equal_ours"] == n and checks["int8_weights"] == 0
    info = inspect_package(root / "model.mlpackage")
    by_bytes = {nx.unpack_int4(m.weight).numpy().tobytes(): m for m in _ours(q4[0]).values()}
    for op in info["_int4_ops"]:  # read back: int4 data and float16 (N, K/G) scales, exactly ours
        m = by_bytes[np.asarray(op.data.val).astype(np.int8).tobytes()]
        assert op.op_type == "constexpr_blockwise_shift_scale"
        assert np.array_equal(np.asarray(op.scale.val), m.weight_scale.numpy())


# --- CLI -------------------------------------------------------------------------------------------
@pytest.fixture()
def cli_inputs(seg, tmp_path):
    import cv2

    from tests.fixtures.tiny import save

    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 256, (96, 80, 3), dtype=np.uint8))
    return save(seg, tmp_path / "seg.safetensors"), images


def test_cli_default_group_size_is_the_library_default():
    from sapiens2_edge import cli

    assert cli.DEFAULT_GROUP_SIZE == DEFAULT_GROUP_SIZE


def test_cli_quantize_int4(cli_inputs, tmp_path):
    from typer.testing import CliRunner

    from sapiens2_edge.cli import app

    ckpt, images = cli_inputs
    out = tmp_path / "q4.safetensors"
    res = CliRunner().invoke(app, ["quantize", str(ckpt), "--scheme", "int4-weight", "--group-size", "64",
                                   "--calib", str(images), "-o", str(out), "--input-size", "128x96"])
    assert res.exit_code == 0, res.output
    back = load_quantized(out)
    assert back.scheme == "int4-weight" and back.recipe.group_size == 64
    assert back.backbone.blocks[0].attn.wq.weight_scale.shape == (64, 1)


def test_cli_export_int4_onnx_needs_no_calibration(cli_inputs, tmp_path):
    from typer.testing import CliRunner

    from sapiens2_edge.cli import app

    ckpt, _ = cli_inputs
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "onnx", "--scheme", "int4-weight",
                                   "-o", str(tmp_path / "a"), "--input-size", "128x96", "--max-batch", "1"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["precision"] == "int4-weight" and manifest["quantization"]["recipe"]["group_size"] == 32
    assert "vs_float" in manifest["fidelity"]


def test_cli_export_int4_refused_by_native(cli_inputs, tmp_path):
    from typer.testing import CliRunner

    from sapiens2_edge.cli import app

    ckpt, _ = cli_inputs
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "native", "--scheme", "int4-weight",
                                   "-o", str(tmp_path / "a")])
    assert res.exit_code != 0
    assert "cannot carry scheme int4-weight (native takes fp16, int8-weight, int8, mixed)" in res.output
