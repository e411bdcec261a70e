"""The ``coreml`` export format: the converted ML Program is checked on Linux (prediction needs macOS)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("coremltools")

import sapiens2_edge as s2e  # noqa: E402
from sapiens2_edge.errors import BackendUnavailableError, ConfigError, ExportError  # noqa: E402
from sapiens2_edge.exporters import export, read_manifest, verification_inputs, verify_artifact  # noqa: E402
from sapiens2_edge.exporters.coreml_export import check_int8_weights, check_package, load_program  # noqa: E402
from sapiens2_edge.models.arch import ArchSpec  # noqa: E402
from sapiens2_edge.models.model import build_model  # noqa: E402
from sapiens2_edge.runtime.coreml_backend import CoreMLBackend, open_runner  # noqa: E402
from tests.fixtures.tiny import HEADS, INPUT, save  # noqa: E402

# Three blocks, the middle one grouped-query (2 kv heads for 4 query heads): small and still GQA.
ARCH = ArchSpec(64, 3, 4, (4, 2, 4), 256, name="tiny-gqa3")
PACKAGE = "model.mlpackage"
linux = pytest.mark.skipif(sys.platform == "darwin", reason="checks the Linux behaviour (no Core ML runtime)")


def ops_of(root) -> tuple[Counter, list]:
    """Op types of the saved program (read back from the package) and its ops."""
    _, prog = load_program(root / PACKAGE)
    ops = []

    def walk(block):
        for op in block.operations:
            ops.append(op)
            for b in op.blocks:
                walk(b)

    walk(prog.functions["main"])
    return Counter(op.op_type for op in ops), ops


def input_spec(root):
    spec, _ = load_program(root / PACKAGE)
    arr = spec.description.input[0].type.multiArrayType
    shapes = [tuple(s.shape) for s in arr.enumeratedShapes.shapes] or [tuple(arr.shape)]
    return spec.description.input[0].name, sorted(shapes), [o.name for o in spec.description.output]


def weight_bytes(root) -> int:
    return (root / PACKAGE / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size


@pytest.fixture(scope="module")
def model():
    return build_model(ARCH, head=HEADS["seg"], seed=5)


@pytest.fixture(scope="module")
def calib():
    return [torch.from_numpy(verification_inputs(INPUT, 2, seed=s)) for s in range(2)]


@pytest.fixture(scope="module")
def fp16(model, tmp_path_factory):
    """The float export, made through the CLI (``--format coreml``; fp16 is the Core ML default)."""
    from typer.testing import CliRunner

    from sapiens2_edge.cli import app

    tmp = tmp_path_factory.mktemp("c")
    ckpt = save(model, tmp / "seg.safetensors")
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "coreml", "--output",
                                   str(tmp / "fp16"), "--input-size", "128x96", "--max-batch", "2"])
    assert res.exit_code == 0, res.output
    return tmp / "fp16"


@pytest.fixture(scope="module")
def int8_weight(model, tmp_path_factory):
    qmodel, _ = s2e.quantize(model, "int8-weight", progress=False)
    root = export(qmodel, tmp_path_factory.mktemp("c") / "w8", format="coreml", input_size=INPUT,
                  max_batch=2)
    return qmodel, root


@pytest.fixture(scope="module")
def w8a8(model, calib, tmp_path_factory):
    qmodel, _ = s2e.quantize(model, "int8", calibration=calib, input_size=INPUT, activation_mode="static",
                             progress=False)
    root = export(qmodel, tmp_path_factory.mktemp("c") / "w8a8", format="coreml", input_size=INPUT,
                  max_batch=1)
    return qmodel, root


def test_float_program(fp16):
    m = read_manifest(fp16)
    assert (m.format, m.task, m.precision, m.input_size, m.max_batch) == ("coreml", "seg", "fp16", [128, 96], 2)
    assert m.file_for("model") == f"{PACKAGE}/Manifest.json"
    assert any(k.endswith("weight.bin") for k in m.files) and m.fidelity == {}  # not run on Linux
    assert input_spec(fp16) == ("image", [(1, 3, 128, 96), (2, 3, 128, 96)], ["logits"])
    types, ops = ops_of(fp16)
    assert types["scaled_dot_product_attention"] == ARCH.depth  # GQA block included: the repeat-KV path
    assert types["linear"] == 6 * ARCH.depth and not any(t.startswith("constexpr_") for t in types)
    big = [op.outputs[0].val for op in ops if op.op_type == "const" and np.size(op.outputs[0].val) >= 4096]
    assert big and {str(np.asarray(v).dtype) for v in big} == {"float16"}
    checks = m.options["coreml"]
    assert checks["compute_precision"] == "float16" and checks["deployment_target"] == "iOS18"
    assert checks["unsupported_ops"] == [] and checks["attention"] == "scaled_dot_product_attention"
    assert checks["source_program_rel_l2"] <= 1e-3  # fp32 RoPE instead of the reference's bf16 rounding
    assert checks["size_bytes"] == sum((fp16 / k).stat().st_size for k in m.files if k.startswith(PACKAGE))


def test_int8_weights_are_ours(int8_weight, fp16):
    qmodel, root = int8_weight
    types, ops = ops_of(root)
    layers = qmodel.quantized_layers()
    assert types["constexpr_blockwise_shift_scale"] == len(layers) == 6 * ARCH.depth
    ours = {m.weight.numpy().tobytes(): m.weight_scale.numpy() for m in layers.values()}
    for op in (o for o in ops if o.op_type == "constexpr_blockwise_shift_scale"):
        data = np.asarray(op.data.val)
        assert data.dtype == np.int8 and data.tobytes() in ours
        scale = np.asarray(op.scale.val, np.float64).reshape(-1)
        np.testing.assert_allclose(scale, ours[data.tobytes()], rtol=2.0**-11)  # fp16-stored scales
    m = read_manifest(root)
    assert m.precision == "int8-weight" and m.quantization["scheme"] == "int8-weight"
    assert m.options["coreml"]["int8_weights_equal_ours"] == len(layers)
    assert m.options["coreml"]["compute_precision"] == "float16"
    assert weight_bytes(root) < 0.75 * weight_bytes(fp16)


def test_w8a8_activations_from_our_scales(w8a8, model):
    qmodel, root = w8a8
    assert input_spec(root)[1] == [(1, 3, 128, 96)]  # max_batch=1: a fixed shape
    types, ops = ops_of(root)
    layers = {n: m for n, m in qmodel.quantized_layers().items() if m.input_scale is not None}
    static = {m.input_scale.item() for m in layers.values()}
    # wq, wk and wv read the same tensor with the same scale: Core ML keeps one quantize op for them.
    inputs = {(n.rsplit(".", 1)[0] if n.endswith(("wq", "wk", "wv")) else n, m.input_scale.item())
              for n, m in layers.items()}
    assert len(layers) == 6 * ARCH.depth and types["quantize"] == types["dequantize"] == len(inputs) == 4 * ARCH.depth
    got = {float(np.asarray(op.scale.val)) for op in ops if op.op_type == "quantize"}
    # one quantize op per distinct scale as Core ML stores it (fp16: two calibrated scales 1e-4 apart
    # may round to one)
    assert len(got) == len({float(np.float16(t)) for t in static})
    for s in got:  # each Core ML activation scale is one of our calibrated scales (fp16-rounded)
        assert min(abs(s - t) / t for t in static) <= 2.0**-11
    assert types["constexpr_blockwise_shift_scale"] == len(qmodel.quantized_layers())
    # The converted program run in torch (fp32 RoPE, Core ML's activation rounding) differs from our
    # W8A8 model by a few int8 rounding flips: far less than the quantization error itself.
    x = torch.from_numpy(verification_inputs(INPUT, 1, seed=1))  # the exporter's own sample
    with torch.no_grad():
        quant_error = float((model(x) - qmodel(x)).norm() / model(x).norm())
    source = read_manifest(root).options["coreml"]["source_program_rel_l2"]
    assert source <= 1e-2 and source <= 0.25 * quant_error


def test_unsupported_quantization_is_refused(model, tmp_path):
    dynamic, _ = s2e.quantize(model, "int8", progress=False)
    with pytest.raises(ConfigError, match=r"Core ML has no dynamic \(per-token\) activation quantization"):
        export(dynamic, tmp_path / "dyn", format="coreml", input_size=INPUT)
    fp8, _ = s2e.quantize(model, "fp8", progress=False)
    with pytest.raises(ConfigError, match="Core ML has no fp8"):
        export(fp8, tmp_path / "fp8", format="coreml", input_size=INPUT)
    with pytest.raises(ConfigError, match="quantized with scheme 'int8', so it exports as precision 'int8'"):
        export(dynamic, tmp_path / "p", format="coreml", input_size=INPUT, precision="fp32")
    with pytest.raises(ConfigError, match="max_batch=65 is more than 64"):
        export(model, tmp_path / "big", format="coreml", input_size=INPUT, max_batch=65)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_checks_catch_a_wrong_program(fp16, int8_weight, model):
    qmodel, root = int8_weight
    pkg = root / PACKAGE
    with pytest.raises(ExportError, match=r"Core ML outputs are \['logits'\], expected \['heatmaps'\]"):
        check_package(pkg, qmodel, INPUT, 2, ["heatmaps"])
    with pytest.raises(ExportError, match="are not batch 1..3 of 3x128x96"):
        check_package(pkg, qmodel, INPUT, 3, ["logits"])
    other, _ = s2e.quantize(build_model(ARCH, head=HEADS["seg"], seed=6), "int8-weight", progress=False)
    with pytest.raises(ExportError, match="equals none of the model's int8 weights"):
        check_package(pkg, other, INPUT, 2, ["logits"])
    with pytest.raises(ExportError, match="carries 0 int8 weights, the model 18"):
        check_int8_weights([], qmodel)
    assert check_package(fp16 / PACKAGE, model, INPUT, 2, ["logits"])["int8_weights"] == 0


@linux
def test_prediction_needs_macos(fp16):
    with pytest.raises(BackendUnavailableError, match="Core ML prediction needs macOS .* this machine runs linux"):
        s2e.Predictor(fp16)
    with pytest.raises(BackendUnavailableError, match="needs macOS"):
        s2e.Predictor(fp16, backend="coreml")
    with pytest.raises(BackendUnavailableError, match="needs macOS"):
        verify_artifact(fp16)
    with pytest.raises(BackendUnavailableError, match="needs macOS"):
        open_runner(fp16, read_manifest(fp16), "auto", 2)
    with pytest.raises(BackendUnavailableError, match="needs macOS"):
        CoreMLBackend(fp16 / PACKAGE)


def test_coreml_backend_imports_no_torch():
    code = "import sys, sapiens2_edge.runtime.coreml_backend; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
