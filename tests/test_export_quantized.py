"""Quantized ONNX / OpenVINO exports from our recipe's scales.

Per layer (fast, a two-layer module): every quantized form matches the torch QuantLinear to float
rounding, and ONNX Runtime's optimized graph runs the int8 GEMM kernels. Whole models (the
trained fixtures, module-scoped because one export takes 20-90 s here): the artifact matches the
torch QuantizedModel and meets the quantization issue's fidelity targets against the float model.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import sapiens2_edge as s2e
from sapiens2_edge.errors import ConfigError
from sapiens2_edge.exporters import compare, torch_outputs
from sapiens2_edge.exporters.onnx_quant import export_modules, int8_dot_products, translation_table
from sapiens2_edge.quantization.config import layer_config
from sapiens2_edge.quantization.linear import QuantLinear
from sapiens2_edge.runtime.onnxruntime_backend import session_options
from tests.fixtures.quant_layers import PREFIX, TwoLayers
from tests.fixtures.synthetic import VISIBLE_KEYPOINTS, make_people

DATA = Path(__file__).parent / "fixtures" / "data"
SIZE = (128, 96)
CALIB = list(make_people(16, seed=1001, size=SIZE)[0])
HELD_OUT = list(make_people(16, seed=2002, size=SIZE)[0])


def layer_input(seed: int = 1) -> torch.Tensor:
    x = torch.randn(2, PREFIX + 40, 64, generator=torch.Generator().manual_seed(seed))
    x[:, :PREFIX] *= 20  # prefix outliers, far outside the static range
    x[:, PREFIX:PREFIX + 3] *= 5  # some patch tokens past the static range: the recipe clips them
    return x


def export_layers(module: nn.Module, x: torch.Tensor, path: Path, opset: int) -> Path:
    with export_modules(module), torch.no_grad():
        torch.onnx.export(module, (x,), str(path), dynamo=True, opset_version=opset, verbose=False,
                          custom_translation_table=translation_table(opset))
    return path


def ort_run(path: Path, x: np.ndarray, optimized: Path | None = None):
    import onnxruntime as ort

    opts = session_options(1)
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def op_counts(path: Path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


# (scheme, activation mode) -> op that must run in ORT's optimized graph (the int8 kernels)
LAYER_CASES = {("int8-weight", "dynamic"): "MatMulNBits", ("int8", "static"): "MatMulIntegerToFloat",
               ("int8", "dynamic"): "MatMulInteger", ("fp8", "dynamic"): "DequantizeLinear",
               ("fp8", "static"): "QuantizeLinear"}



@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_gemm_weights_stored_as_uint8_exact_where_u8s8_saturates(tmp_path, mode):
    """Weights and inputs at the top of the int8 range: x86's u8 x s8 instruction without VNNI adds two
    255 * 127 products in int16 and saturates; the graph stores our int8 weights as uint8 + 128 (zero
    point 128), the form every CPU's int8 GEMM computes exactly."""
    import openvino as ov

    module = TwoLayers("int8", mode).eval()
    fc = nn.Linear(64, 128)
    with torch.no_grad():
        fc.weight.fill_(0.5)
        fc.weight[1::2] *= -1  # rows of +127 and of -127
        fc.bias.zero_()
    module.a = QuantLinear.from_float(fc, layer_config("int8", activation_mode=mode), PREFIX, torch.tensor([0.02]))
    x = torch.full((1, PREFIX + 8, 64), 0.02 * 127)  # inputs quantized to +127: uint8 255
    x[:, :, 1::2] *= 0.5
    with torch.no_grad():
        ref = module(x).numpy()
    path = export_layers(module, x, tmp_path / "m.onnx", 18)
    stored = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    ours = module.a.decompose().weight.t().numpy().astype(np.int16)
    (w_u8,) = [v for v in stored.values() if v.dtype == np.uint8 and v.shape == ours.shape and
               np.array_equal(v.astype(np.int16) - 128, ours)]
    assert any(v.dtype == np.uint8 and v.shape == (128,) and (v == 128).all() for v in stored.values())  # zero points
    got = {"onnxruntime": ort_run(path, x.numpy()), "openvino": ov.Core().compile_model(
        str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: x.numpy()})[0]}
    for runtime, y in got.items():
        assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 2e-6, runtime

def test_graph_optimizer_skips_only_rules_that_never_fire_on_our_graphs(tmp_path, monkeypatch):
    """The exporter's optimizer runs without its multi-output-node rewrite rules (quadratic in Slice
    nodes): a two-block int8 model (both block kinds, a head) exports to the same operators either way."""
    import contextlib

    import onnxscript.rewriter as rewriter

    from sapiens2_edge.exporters import onnx_export
    from sapiens2_edge.models.arch import ArchSpec
    from sapiens2_edge.models.model import build_model
    from tests.fixtures.tiny import HEADS

    skipped = [r for r in rewriter._DEFAULT_REWRITE_RULES if not onnx_export._single_output(r)]
    assert skipped, "onnxscript has no multi-output rule left: drop without_multi_output_rewrites"
    arch = ArchSpec(64, 2, 4, (2, 4), 256, name="two-blocks")
    model = build_model(arch, head=HEADS["seg"], seed=0)
    q, _ = s2e.quantize(model, "int8", calibration=CALIB[:2], input_size=SIZE, activation_mode="static",
                        progress=False)
    rules = rewriter._DEFAULT_REWRITE_RULES
    for d in ("lean", "full"):
        (tmp_path / d).mkdir()
    onnx_export.export_onnx(q, tmp_path / "lean", SIZE, 2)
    assert rewriter._DEFAULT_REWRITE_RULES is rules  # the library's list is back after the export
    monkeypatch.setattr(onnx_export, "without_multi_output_rewrites", contextlib.nullcontext)
    onnx_export.export_onnx(q, tmp_path / "full", SIZE, 2)
    lean, full = (op_counts(tmp_path / d / "model.onnx") for d in ("lean", "full"))
    assert lean == full and lean["Slice"] > 0  # the Slices the skipped rule would have looked at


@pytest.mark.parametrize("scheme,mode", list(LAYER_CASES))
def test_layer_export_matches_quantlinear_and_runs_int8_kernels(tmp_path, scheme, mode):
    module = TwoLayers(scheme, mode).eval()
    x = layer_input()
    with torch.no_grad():
        ref = module(x).numpy()
    opset = 19 if scheme == "fp8" else 18
    path = export_layers(module, x, tmp_path / "m.onnx", opset)
    got = ort_run(path, x.numpy(), tmp_path / "opt.onnx")
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel < 2e-6, rel
    # the quantization is not a no-op: a float layer is far away
    module_float = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
    with torch.no_grad():
        module_float[0].weight.copy_(module.a.dequantized_weight())
        module_float[0].bias.copy_(module.a.bias)
        module_float[2].weight.copy_(module.b.dequantized_weight())
        module_float[2].bias.copy_(module.b.bias)
        float_out = module_float(x).numpy()
    if mode == "static" or scheme != "int8-weight":
        assert np.linalg.norm(float_out - ref) / np.linalg.norm(ref) > 20 * max(rel, 1e-7)
    assert op_counts(tmp_path / "opt.onnx")[LAYER_CASES[(scheme, mode)]] >= 2
    if (scheme, mode) == ("int8", "static"):
        assert op_counts(tmp_path / "opt.onnx")["MatMulIntegerToFloat"] == 2  # both patch-token GEMMs fused


def test_fp8_graph_is_tensorrt_qdq_and_reference_evaluator_agrees(tmp_path):
    from onnx.reference import ReferenceEvaluator

    module = TwoLayers("fp8", "static").eval()
    x = layer_input()
    path = export_layers(module, x, tmp_path / "fp8.onnx", 19)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19
    fp8 = onnx.TensorProto.FLOAT8E4M3FN
    weights = [i for i in model.graph.initializer if i.data_type == fp8 and len(i.dims) == 2]
    assert sorted(tuple(w.dims) for w in weights) == [(64, 128), (128, 32)]  # (K, N), stored as E4M3
    dq_axis = [next((a.i for a in n.attribute if a.name == "axis"), None) for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in {w.name for w in weights}]
    assert dq_axis and all(a == 1 for a in dq_axis)  # per output channel
    producers = {o: n for n in model.graph.node for o in n.output}
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(q_nodes) == 2 and all(producers[n.output[0]].op_type != "Cast" for n in q_nodes)
    with torch.no_grad():
        ref = module(x).numpy()
    got = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x.numpy()})[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5


# --- whole models on the trained fixtures --------------------------------------------------------------
@pytest.fixture(scope="module")
def seg():
    return s2e.load_model(DATA / "trained_tiny_seg.safetensors")


@pytest.fixture(scope="module")
def pose():
    return s2e.load_model(DATA / "trained_tiny_pose.safetensors")


@pytest.fixture(scope="module")
def seg_int8(seg):
    return s2e.quantize(seg, "int8", calibration=CALIB, input_size=SIZE, activation_mode="static", progress=False)


@pytest.fixture(scope="module")
def seg_onnx_int8(seg, seg_int8, tmp_path_factory):
    q, report = seg_int8
    return s2e.export(q, tmp_path_factory.mktemp("seg") / "onnx", format="onnx", input_size=SIZE, max_batch=4,
                      float_model=seg, fidelity_data=HELD_OUT, report=report)


@pytest.fixture(scope="module")
def seg_openvino_int8(seg, seg_int8, tmp_path_factory):
    return s2e.export(seg_int8[0], tmp_path_factory.mktemp("seg") / "ov", format="openvino", input_size=SIZE,
                      max_batch=4, float_model=seg, fidelity_data=HELD_OUT)


def manifest(root) -> dict:
    return json.loads((Path(root) / "manifest.json").read_text())


def test_onnx_int8_static_matches_torch_and_meets_seg_target(seg_onnx_int8, seg_int8, seg):
    m = manifest(seg_onnx_int8)
    assert m["precision"] == "int8"
    assert m["quantization"]["recipe"]["activation_mode"] == "static"
    assert m["quantization"]["export"]["layers"] == {"int8/static": 108}
    assert "int8" in m["fidelity"]["reference"] and m["fidelity"]["rel_l2"] <= m["fidelity"]["tolerance"]
    vs = m["fidelity"]["vs_float"]
    assert vs["samples"] == 16
    assert vs["artifact"]["seg_agreement"] >= 0.99
    assert abs(vs["artifact"]["seg_agreement"] - vs["torch_quantized"]["seg_agreement"]) < 2e-3
    # the artifact runs the recipe, not the float model: the same distance from float as torch int8
    assert vs["artifact"]["rel_l2"] == pytest.approx(vs["torch_quantized"]["rel_l2"], rel=0.1)
    # and re-running it here agrees with the torch QuantizedModel on fresh inputs
    pred_in = torch.stack([torch.from_numpy(s2e.exporters.verification_inputs(SIZE, 1, seed=5)[0])]).numpy()
    from sapiens2_edge.runtime import open_artifact

    runner = open_artifact(seg_onnx_int8, "onnxruntime")[1]
    assert compare(torch_outputs(seg_int8[0], pred_in), runner(pred_in), ["logits"])["rel_l2"] < 0.02


def test_onnx_int8_ops_in_optimized_graph(seg_onnx_int8, tmp_path):
    from sapiens2_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend

    opt = tmp_path / "opt.onnx"
    OnnxRuntimeBackend(seg_onnx_int8 / "model.onnx", providers=["CPUExecutionProvider"], optimized_path=opt)
    ops = op_counts(opt)
    blocks = 18
    # every quantized linear's GEMM runs in int8 (108 linears; the SwiGLU's w12 as two GEMMs, gate and up)
    assert ops["MatMulIntegerToFloat"] == 108 + blocks
    assert ops["MatMul"] + ops["FusedMatMul"] < 108 + blocks + 40  # prefix GEMMs + attention, nothing else float


def test_openvino_int8_runs_int8_kernels_and_matches(seg_openvino_int8, seg):
    m = manifest(seg_openvino_int8)
    prec = m["quantization"]["export"]["runtime_precisions"]  # the compiled kernels' precisions
    signed, why = int8_dot_products()
    if signed:  # int8 GEMM kernels (i8 or u8 by CPU), never float: the weights are signed with zero point 0
        assert m["quantization"]["export"]["int8_gemm_weights"] == f"signed, zero point 0 ({why}): OpenVINO's int8 FullyConnected"
        assert prec.get("FullyConnected i8", 0) + prec.get("FullyConnected u8", 0) >= 108, prec
        assert not any(k.startswith("FullyConnected f") or k.startswith("FullyConnected bf") for k in prec), prec
    else:  # u8 x s8 saturates here: the weights stay uint8 + 128, exact, run decompressed by OpenVINO
        assert m["quantization"]["export"]["int8_gemm_weights"].startswith(f"uint8 + 128 ({why}")
        assert prec.get("FullyConnected f32", 0) >= 108, prec  # float GEMMs on decompressed weights
    # the runtime says where its int8 linears run as float GEMMs (an fp32 artifact is faster there)
    from sapiens2_edge.runtime import open_artifact

    note = f"no int8 GEMM kernels here ({why}): its int8 linears run as float GEMMs on decompressed weights"
    assert (note in open_artifact(seg_openvino_int8, "openvino")[1].describe()) == (not signed)
    assert m["fidelity"]["rel_l2"] <= 0.05
    assert m["fidelity"]["vs_float"]["artifact"]["seg_agreement"] >= 0.99
    # the FFN's gate and up projections are two int8 GEMMs on one quantized input: no Split (OpenVINO's
    # reference kernel), and no second input quantization
    import openvino as ov

    kinds = collections.Counter(op.get_type_name() for op in
                                ov.Core().read_model(str(seg_openvino_int8 / "openvino" / "model.xml")).get_ops())
    depth = seg.arch.depth
    # where OpenVINO builds int8 GEMMs, each FFN linear (gate, up, w3) is two: its prefix rows' and its patch
    # rows' (one weight)
    apart = 3 if signed else 0
    assert kinds["Split"] == 0 and kinds["MatMul"] == (7 + apart) * depth, kinds
    # ln1 -> q/k/v, attention -> proj, ln2 -> gate/up, -> w3; the FFN's two per rows' GEMM
    assert kinds["FakeQuantize"] == (4 + 2 * bool(apart)) * depth, kinds
    if signed:
        assert prec.get("FullyConnected i8", 0) + prec.get("FullyConnected u8", 0) == 10 * depth, prec
        assert m["quantization"]["export"]["prefix_rows_apart"] == 2 * depth  # w12 and w3 of each block
        weights = [op for op in ov.Core().read_model(str(seg_openvino_int8 / "openvino" / "model.xml")).get_ops()
                   if op.get_type_name() == "Constant" and str(op.get_output_element_type(0)) == "<Type: 'int8_t'>"
                   and len(op.get_output_shape(0)) == 2]
        assert len(weights) == 7 * depth  # each held once: the two GEMMs of a linear read one weight


@pytest.mark.parametrize("flags,signed,why", [
    ("fpu sse2 avx2 avx512f avx512_vnni", True, "this CPU has avx512_vnni"),
    ("fpu avx2 avx_vnni amx_int8 amx_tile", True, "this CPU has amx_int8, avx_vnni"),
    ("fpu sse2 avx2 fma", False, "this CPU has no VNNI or AMX"),
])
def test_int8_weight_form_for_openvino_follows_the_cpu(flags, signed, why, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert int8_dot_products(f"processor\t: 0\nflags\t\t: {flags}\n") == (signed, why)
    assert int8_dot_products("processor\t: 0\n") == (True, "no CPU flags to read here")


@pytest.mark.parametrize("variable,cap,signed", [
    ("ONEDNN_MAX_CPU_ISA", "AVX2", False), ("ONEDNN_MAX_CPU_ISA", "avx512_core", False),
    ("DNNL_MAX_CPU_ISA", "AVX2", False), ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI", True),
    ("ONEDNN_MAX_CPU_ISA", "AVX2_VNNI", True),
])
def test_a_onednn_cap_below_vnni_counts_as_a_cpu_without_it(variable, cap, signed, monkeypatch):
    """torch's bundled oneDNN honours the cap too: its int8 GEMMs saturate under it on a VNNI CPU."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv(variable, cap)
    got = int8_dot_products("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    if signed:
        assert got == (True, "this CPU has avx512_vnni")
    else:
        assert got == (False, f"{variable}={cap.upper()} keeps oneDNN below its VNNI kernels (torch's int8 GEMMs too)")


def test_openvino_int8_on_a_cpu_without_vnni_keeps_exact_uint8_weights(seg_int8, monkeypatch, tmp_path):
    """Where u8 x s8 saturates, the OpenVINO graph keeps the exact uint8 + 128 weights (as the ONNX one)."""
    from sapiens2_edge.exporters import onnx_quant

    monkeypatch.setattr(onnx_quant, "int8_dot_products", lambda cpuinfo=None: (False, "no VNNI (test)"))
    root = s2e.export(seg_int8[0], tmp_path / "ov", format="openvino", input_size=SIZE, max_batch=1)
    m = manifest(root)
    assert m["quantization"]["export"]["int8_gemm_weights"] == ("uint8 + 128 (no VNNI (test): u8 x s8 saturates; "
                                                                "exact, OpenVINO decompresses them)")
    assert m["fidelity"]["rel_l2"] <= 0.05
    import openvino as ov

    weights = [op for op in ov.Core().read_model(str(root / "openvino" / "model.xml")).get_ops()
               if op.get_type_name() == "Constant" and op.get_output_shape(0) == [64, 64]]
    assert weights and {str(w.get_output_element_type(0)) for w in weights} <= {"<Type: 'uint8_t'>", "<Type: 'float32'>"}
    assert any(str(w.get_output_element_type(0)) == "<Type: 'uint8_t'>" for w in weights)


def test_pose_openvino_int8_meets_displacement_target(pose, tmp_path):
    q, _ = s2e.quantize(pose, "int8", calibration=CALIB, input_size=SIZE, activation_mode="static", progress=False)
    root = s2e.export(q, tmp_path / "pose", format="openvino", input_size=SIZE, max_batch=4, float_model=pose,
                      fidelity_data=HELD_OUT, fidelity_keypoints=VISIBLE_KEYPOINTS)
    vs = manifest(root)["fidelity"]["vs_float"]
    assert vs["artifact"]["pose_keypoints"] == 16 * len(VISIBLE_KEYPOINTS)
    assert vs["artifact"]["pose_mean_px"] <= 0.5, vs


def test_cli_int8_weight_onnx_is_as_exact_as_fp32(pose, tmp_path):
    from typer.testing import CliRunner

    from sapiens2_edge.cli import app

    root = tmp_path / "w8"
    r = CliRunner().invoke(app, ["export", str(DATA / "trained_tiny_pose.safetensors"), "--format", "onnx", "--scheme",
                                 "int8-weight", "--input-size", "128x96", "--max-batch", "2", "--output", str(root)])
    assert r.exit_code == 0, r.output
    assert "int8-weight" in r.output and "QuantizedModel" in r.output
    q, _ = s2e.quantize(pose, "int8-weight", progress=False)
    m = manifest(root)
    assert m["precision"] == "int8-weight" and m["quantization"]["export"]["layers"] == {"int8-weight/none": 108}
    assert m["fidelity"]["rel_l2"] < 5e-4  # float activations: only summation order differs (MatMulNBits)
    int8_bytes = sum(i.dims[0] * i.dims[1] for i in onnx.load(str(root / "model.onnx")).graph.initializer
                     if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2)  # not the zero points
    assert int8_bytes == sum(lyr.weight.numel() for lyr in q.quantized_layers().values())


# --- errors ----------------------------------------------------------------------------------------------
def test_precision_errors(seg, seg_int8, tmp_path):
    with pytest.raises(ConfigError, match="needs a quantized model: quantize first"):
        s2e.export(seg, tmp_path / "a", format="onnx", precision="int8")
    with pytest.raises(ConfigError, match="quantized with scheme 'int8', so it exports as precision 'int8'"):
        s2e.export(seg_int8[0], tmp_path / "b", format="onnx", precision="fp16")
    with pytest.raises(ConfigError, match="fp8 artifacts target TensorRT"):
        q8, _ = s2e.quantize(seg, "fp8", progress=False)
        s2e.export(q8, tmp_path / "c", format="openvino")
    assert not any(tmp_path.iterdir())


def test_cli_export_scheme_errors(tmp_path):
    from typer.testing import CliRunner

    from sapiens2_edge.cli import app

    def text(r):
        return " ".join(r.output.split())  # rich wraps long lines

    ckpt = str(DATA / "trained_tiny_seg.safetensors")
    r = CliRunner().invoke(app, ["export", ckpt, "--format", "onnx", "--scheme", "int8", "--output", str(tmp_path / "o")])
    assert r.exit_code != 0 and "needs calibration images: pass --calib DIR" in text(r)
    r = CliRunner().invoke(app, ["export", ckpt, "--scheme", "int4", "--output", str(tmp_path / "o")])
    assert r.exit_code != 0 and "'--scheme': 'int4' is not one of" in text(r)
    r = CliRunner().invoke(app, ["export", ckpt, "--scheme", "int8", "--calib", str(tmp_path), "--activations", "x",
                                 "--output", str(tmp_path / "o")])
    assert r.exit_code != 0 and "'--activations': 'x' is not one of 'static', 'dynamic'" in text(r)
