"""OpenVINO inference precision: the policy each artifact records at export and the backend honours
at load (fp32 in f32 + accuracy mode, bf16 where the CPU computes it natively, int8 artifacts'
float ops in bf16 or f32 per CPU, both verified at export)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import sapiens2_edge as s2e
from sapiens2_edge.artifact import TOLERANCE, Manifest, read_manifest
from sapiens2_edge.errors import ConfigError
from sapiens2_edge.exporters import compare, torch_outputs, verification_inputs
from sapiens2_edge.exporters.onnx_quant import int8_dot_products
from sapiens2_edge.runtime import open_artifact, verify_artifact
from sapiens2_edge.runtime import openvino_backend as ovb
from tests.fixtures.tiny import INPUT, tiny_model

DATA = Path(__file__).parent / "fixtures" / "data"

pytest.importorskip("openvino")

NATIVE = ovb.native_bf16()


@pytest.fixture(scope="module")
def seg():
    return tiny_model("seg", seed=2)


@pytest.fixture(scope="module")
def ir(tmp_path_factory):
    """A one-MatMul OpenVINO IR: enough to see how the backend compiles it."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 3, 8, 8], np.float32)
    w = ops.constant(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32))
    path = tmp_path_factory.mktemp("ir") / "model.xml"
    ov.save_model(ov.Model([ops.matmul(x, w, False, False)], [x]), str(path))
    return path


def manifest_for(precision: str, policy: dict | None):
    options = {} if policy is None else {"inference_precision": policy}
    return Manifest(format="openvino", task="seg", arch={}, head=None, input_size=[8, 8], max_batch=1,
                    precision=precision, rope_mode="bf16", preprocessing={}, outputs=["logits"],
                    files={"model.xml": {"role": "model"}}, options=options)


@pytest.fixture(scope="module")
def fp32_and_bf16(seg, tmp_path_factory):
    d = tmp_path_factory.mktemp("ov")
    return (s2e.export(seg, d / "fp32", format="openvino", input_size=INPUT, max_batch=2),
            s2e.export(seg, d / "bf16", format="openvino", precision="bf16", input_size=INPUT, max_batch=2))


def hints(runner) -> tuple[str, str]:
    c = runner.compiled
    return (c.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            str(c.get_property("EXECUTION_MODE_HINT")).rsplit(".", 1)[-1])


# -- the rule, without compiling anything -----------------------------------------------------------------
@pytest.mark.parametrize("policy, precision, native, expected", [
    ({"mode": "f32"}, "fp32", (True, "amx"), ("f32", "ACCURACY")),
    ({"mode": "f32"}, "fp16", (True, "amx"), ("f32", "ACCURACY")),
    (None, "fp32", (True, "amx"), ("f32", "ACCURACY")),  # exported before policies were recorded
    (None, "int8", (True, "amx"), ("f32", None)),
    ({"mode": "bf16"}, "bf16", (True, "amx"), ("bf16", None)),
    ({"mode": "bf16"}, "bf16", (False, "none"), ("f32", None)),
    ({"mode": "auto", "verified": ["bf16", "f32"]}, "int8", (True, "amx"), ("bf16", None)),
    ({"mode": "auto", "verified": ["bf16", "f32"]}, "int8", (False, "none"), ("f32", None)),
    ({"mode": "auto", "verified": ["f32"]}, "int8", (True, "amx"), ("f32", None)),  # bf16 not verified
])
def test_resolve_precision(policy, precision, native, expected):
    hint, mode, why = ovb.resolve_precision(policy, precision, native)
    assert (hint, mode) == expected and why


def test_resolve_precision_says_why():
    assert "this CPU has no native bf16" in ovb.resolve_precision({"mode": "bf16"}, "bf16", ovb.native_bf16(
        "flags\t: fpu avx512f avx512_vnni\n"))[2]
    assert "verified f32 only" in ovb.resolve_precision({"mode": "auto", "verified": ["f32"]}, "int8", (True, ""))[2]
    with pytest.raises(ConfigError, match=r"policy \{'mode': 'f16'\} is not one this SDK knows; expected mode 'f32'"):
        ovb.resolve_precision({"mode": "f16"}, "fp16", (True, ""))


@pytest.mark.parametrize("cpuinfo, native", [
    ("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n", True),  # Zen 4 / Cooper Lake
    ("flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n", True),  # Sapphire Rapids
    ("flags\t\t: fpu avx2 avx512f avx512_vnni\n", False),  # Ice Lake: VNNI, no bf16
])
def test_native_bf16_from_cpu_flags(cpuinfo, native):
    assert ovb.native_bf16(cpuinfo)[0] is native


# -- what the backend compiles for each policy (a one-op IR: fast) -------------------------------------------
@pytest.mark.parametrize("precision, policy, native, expected", [
    ("fp32", {"mode": "f32"}, (True, "x"), ("f32", "ACCURACY")),
    ("fp32", None, (True, "x"), ("f32", "ACCURACY")),
    ("bf16", {"mode": "bf16"}, (True, "x"), ("bf16", "PERFORMANCE")),
    ("bf16", {"mode": "bf16"}, (False, "x"), ("f32", "PERFORMANCE")),
    ("int8", {"mode": "auto", "verified": ["bf16", "f32"]}, (True, "x"), ("bf16", "PERFORMANCE")),
    ("int8", {"mode": "auto", "verified": ["bf16", "f32"]}, (False, "x"), ("f32", "PERFORMANCE")),
    ("int8", {"mode": "auto", "verified": ["f32"]}, (True, "x"), ("f32", "PERFORMANCE")),
])
def test_compiled_precision_is_the_manifests(ir, monkeypatch, precision, policy, native, expected):
    monkeypatch.setattr(ovb, "native_bf16", lambda cpuinfo=None: native)
    if expected[0] == "bf16" and not NATIVE[0]:
        expected = ("f32", expected[1])  # asked for bf16, OpenVINO declines it on a CPU without it
    runner = ovb.open_runner(ir.parent, manifest_for(precision, policy), "cpu", 1)
    assert hints(runner) == expected
    assert f"({expected[0]}, {expected[1].lower()} mode: " in runner.describe()


# -- float artifacts ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fp32_compiles_f32_in_accuracy_mode(fp32_and_bf16):
    root = fp32_and_bf16[0]
    m = read_manifest(root)
    assert m.options["inference_precision"] == {"mode": "f32"}
    manifest, runner, _ = open_artifact(root, "openvino")
    assert hints(runner) == ("f32", "ACCURACY")
    assert "f32, accuracy mode: fp32 artifact" in runner.describe()
    assert m.fidelity["rel_l2"] < 1e-4 and m.rope_mode == "fp32"  # exact but for summation order


def test_fp32_ir_has_no_bf16_and_torchs_rope_tables(seg, tmp_path):
    """An fp32 IR is a pure f32 graph (no bf16 Converts, which OpenVINO rounds differently per CPU),
    its RoPE tables are torch's fp32 tables bit for bit, and its reference is torch with fp32 RoPE."""
    import openvino as ov

    trained = s2e.load_model(DATA / "trained_tiny_seg.safetensors")  # trained: the RoPE rounding shows
    root = s2e.export(trained, tmp_path / "fp32", format="openvino", input_size=INPUT, max_batch=1)
    assert trained.rope_mode == "bf16"  # the model gets its own mode back
    m = read_manifest(root)
    assert m.rope_mode == "fp32" and m.fidelity["reference"] == "torch fp32 eager, RoPE fp32"
    assert m.fidelity["rel_l2"] <= 1e-4  # the fp32 target, on any CPU
    # what fp32 RoPE moves the outputs by, against the model's own bf16 RoPE (torch against torch)
    assert 1e-4 < m.fidelity["vs_rope_bf16"] < 1e-2
    graph = ov.Core().read_model(str(root / "openvino" / "model.xml"))
    types = {str(t) for op in graph.get_ordered_ops() for t in
             [op.get_output_element_type(i) for i in range(op.get_output_size())]}
    assert not any("bf16" in t or "bfloat16" in t for t in types), types
    from sapiens2_edge.models.backbone import _rotation_tables
    from sapiens2_edge.spec import NUM_PREFIX_TOKENS

    trained.backbone.rope_embed.mode = "fp32"
    try:
        sin, cos = trained.backbone.rope_embed.tables(*trained.arch.grid(INPUT))
    finally:
        trained.backbone.rope_embed.mode = "bf16"
    # the constants the rotation multiplies by: torch's fp32 tables, padded for the prefix, sin signed
    _, sin, cos = _rotation_tables(sin, cos, len(sin) + NUM_PREFIX_TOKENS, sin.shape[-1])
    tables = [sin.numpy(), cos.numpy()]
    # RoPE runs over the whole sequence: no prefix slicing and concatenating back per q/k, and
    # rotate_half is one Gather (OpenVINO ran those Slice/Split/Concat as reference kernels); the
    # FFN's gate and up projections are two GEMMs (no Split of the fused one)
    kinds = [op.get_type_name() for op in graph.get_ordered_ops()]
    depth = trained.arch.depth
    assert kinds.count("Concat") <= 1 and kinds.count("VariadicSplit") == 0 and kinds.count("Slice") <= 1, kinds
    assert kinds.count("Split") == 0 and kinds.count("Gather") == 2 * depth  # q and k
    linears_per_block = 7  # wq, wk, wv, proj, gate, up, w3
    assert kinds.count("MatMul") == linears_per_block * depth, kinds.count("MatMul")
    consts = [op.get_data() for op in graph.get_ordered_ops() if op.get_type_name() == "Constant"]
    for table in tables:
        assert any(c.size == table.size and c.dtype == np.float32 and
                   np.array_equal(c.reshape(table.shape).view(np.uint32), table.view(np.uint32)) for c in consts)


@pytest.mark.slow
def test_bf16_export_verified_with_its_tolerance(fp32_and_bf16, seg):
    fp32_root, root = fp32_and_bf16
    m = read_manifest(root)
    assert m.precision == "bf16" and m.options["inference_precision"] == {"mode": "bf16"}
    assert m.fidelity["tolerance"] == TOLERANCE["bf16"] and m.fidelity["rel_l2"] <= TOLERANCE["bf16"]
    _, runner, _ = open_artifact(root, "openvino")
    expected = "bf16" if NATIVE[0] else "f32"
    assert hints(runner)[0] == expected
    # what runs is what the manifest's policy resolves to on this CPU, and its numbers show it
    x = verification_inputs(INPUT, 2, seed=7)
    err = compare(torch_outputs(seg, x), runner(x), ["logits"])["rel_l2"]
    err32 = compare(torch_outputs(seg, x), open_artifact(fp32_root, "openvino")[1](x), ["logits"])["rel_l2"]
    if NATIVE[0]:
        assert 1e-4 < err <= TOLERANCE["bf16"] and err > 10 * err32, (err, err32)
    else:
        assert err < 1e-4


@pytest.mark.slow
def test_bf16_artifact_on_a_cpu_without_native_bf16_runs_f32(fp32_and_bf16, monkeypatch):
    monkeypatch.setattr(ovb, "native_bf16", lambda cpuinfo=None: (False, "this CPU has no native bf16 (test)"))
    _, runner, _ = open_artifact(fp32_and_bf16[1], "openvino")
    assert hints(runner)[0] == "f32" and "no native bf16 (test)" in runner.describe()


# -- int8 ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_int8_records_and_honours_its_float_precision(tmp_path, monkeypatch):
    from tests.fixtures.synthetic import make_people

    seg = s2e.load_model(DATA / "trained_tiny_seg.safetensors")  # trained: realistic activations
    calib = list(make_people(8, seed=1001, size=INPUT)[0])
    q, _ = s2e.quantize(seg, "int8", calibration=calib, input_size=INPUT, activation_mode="static", progress=False)
    root = s2e.export(q, tmp_path / "int8", format="openvino", input_size=INPUT, max_batch=2, float_model=seg)
    m = read_manifest(root)
    policy = m.options["inference_precision"]
    assert policy["mode"] == "auto" and m.quantization["export"]["float_precision"]["mode"] == "auto"
    fid = policy["fidelity"]
    assert fid["f32"]["passed"] and fid["f32"]["rel_l2"] <= TOLERANCE["int8"] == fid["f32"]["tolerance"]
    if NATIVE[0]:  # bf16 no further from the float model than the f32 artifact and bf16's bound in quadrature
        assert fid["bf16"]["against"] == "float model"
        base = fid["f32"]["rel_l2_vs_float"]
        assert fid["bf16"]["tolerance"] == pytest.approx(np.hypot(base, TOLERANCE["bf16"]))
        assert fid["bf16"]["passed"] and fid["bf16"]["rel_l2"] <= fid["bf16"]["tolerance"]
        assert fid["bf16"]["rel_l2"] != base  # it did run in bf16
        assert policy["verified"] == ["bf16", "f32"]
    else:
        assert policy["verified"] == ["f32"] and not fid["bf16"]["passed"]
    _, runner, _ = open_artifact(root, "openvino")
    assert hints(runner)[0] == ovb.resolve_precision(policy, "int8")[0] == ("bf16" if NATIVE[0] else "f32")
    prec = runner.matmul_precisions()
    if int8_dot_products()[0]:  # int8 GEMM kernels where the CPU multiplies int8 exactly (VNNI / AMX)
        assert prec.get("FullyConnected i8", 0) + prec.get("FullyConnected u8", 0) > 0, prec
    else:  # elsewhere the weights stay uint8 + 128 (exact), which OpenVINO runs decompressed
        assert m.quantization["export"]["int8_gemm_weights"].startswith("uint8 + 128"), m.quantization["export"]
    # the stored reference (torch QuantizedModel) is re-checked as the export checked it: float ops in f32
    assert hints(runner.as_verified())[0] == "f32" and m.fidelity["rel_l2"] == fid["f32"]["rel_l2"]
    assert verify_artifact(root, "openvino")["passed"]
    monkeypatch.setattr(ovb, "native_bf16", lambda cpuinfo=None: (False, "no bf16 here (test)"))
    _, runner, _ = open_artifact(root, "openvino")
    # the reason given: the CPU's, where the export verified bf16; otherwise that it verified f32 only
    reason = "no bf16 here (test)" if NATIVE[0] else "the export verified f32 only"
    assert hints(runner)[0] == "f32" and reason in runner.describe()


def test_cli_exports_bf16_and_the_predictor_says_why(seg, tmp_path):
    from typer.testing import CliRunner

    from sapiens2_edge.cli import app
    from tests.fixtures.tiny import save

    ckpt = save(seg, tmp_path / "seg.safetensors")
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "openvino", "--scheme", "bf16", "--input-size",
                                   f"{INPUT[0]}x{INPUT[1]}", "--max-batch", "1", "--output", str(tmp_path / "bf16")])
    assert res.exit_code == 0, res.output
    m = read_manifest(tmp_path / "bf16")
    assert m.precision == "bf16" and m.options["inference_precision"] == {"mode": "bf16"}
    assert m.fidelity["rel_l2"] <= TOLERANCE["bf16"] == m.fidelity["tolerance"]
    pred = s2e.Predictor(tmp_path / "bf16")
    assert pred.backend_reason.startswith("auto: ")
    expected = "bf16, performance mode: the artifact's precision in bf16" if NATIVE[0] else "f32, performance mode"
    assert expected in pred.runner.describe() and NATIVE[1] in pred.runner.describe()
    # a format without bf16 refuses it before any work, naming the one that takes it
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "onnx", "--scheme", "bf16", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "or --format openvino / torch / native for bf16" in " ".join(res.output.split()), res.output
    assert not (tmp_path / "o").exists()
