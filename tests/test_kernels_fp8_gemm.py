"""FP8 E4M3 rowwise GEMM: interpreter runs where the interpreter is trustworthy (E4M3 inputs are
loaded as bytes and widened exactly, accumulation is fp32; no fp8 rounding happens in the GEMM),
the QuantLinear ``triton`` path, the compute-capability gate, and input errors. The real-GPU
checks are in test_kernels_gpu_gemm.py."""

from __future__ import annotations

import pytest
import torch

import sapiens2_edge.kernels.scaled_gemm.op as gemm_ops
from sapiens2_edge.errors import ConfigError, InvalidTensorError
from sapiens2_edge.kernels import switch
from sapiens2_edge.kernels.scaled_gemm.op import LAUNCHES, fp8_gemm, fp8_unsupported_reason
from sapiens2_edge.kernels.scaled_gemm.reference import fp8_gemm_reference
from tests.test_kernels_int8_gemm import layer_forward, make_layer, run_interpreted  # noqa: F401 (child runs them)

E4M3 = torch.float8_e4m3fn


def gemm(a, w, sa, sw, bias, out_dtype):
    return fp8_gemm(a, w, sa, sw, bias, out_dtype)


def _small_ints(shape, seed):
    """E4M3 values that are small integers: every product and partial sum is exact in fp32, so the
    kernel must match the reference bit for bit whatever the summation order."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-8, 9, shape, generator=g).float().to(E4M3)


def _spread(shape, seed):
    """E4M3 values across the whole range, subnormals included."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.exp2(torch.empty(shape).uniform_(-10, 8.7, generator=g))
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    return (mag * sign).clamp(-448, 448).to(E4M3)


def _scales(m, n, per_channel, bias, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(m, 1, generator=g) * 1e-2 + 1e-3, torch.rand(n if per_channel else 1, generator=g) + 0.01,
            torch.randn(n, generator=g) if bias else None)


EXACT = [(37, 48, 80, torch.float32, True, True), (5, 16, 112, torch.float16, False, True),
         (33, 80, 50, torch.float32, True, False)]
SPREAD = [(19, 48, 96, torch.float32, True, True)]
LAYERS = [(48, 80, "dynamic", "per_channel", True, (2, 13, 48)), (80, 48, "static", "per_tensor", False, (2, 11, 80))]


def _x(shape, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    x[:, :9] *= 8.0
    return x


def _calls():
    calls = []
    for i, (m, n, k, od, pc, b) in enumerate(EXACT):
        calls.append(("gemm", (_small_ints((m, k), i), _small_ints((n, k), 50 + i), *_scales(m, n, pc, b, i), od)))
    for i, (m, n, k, od, pc, b) in enumerate(SPREAD):
        calls.append(("gemm", (_spread((m, k), 7 + i), _spread((n, k), 70 + i), *_scales(m, n, pc, b, i), od)))
    for i, (k, n, mode, gran, bias, shape) in enumerate(LAYERS):
        calls.append(("layer_forward", (i, k, n, mode, "fp8", gran, bias, _x(shape, 30 + i))))
    return calls


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    calls = _calls()
    results = run_interpreted("test_kernels_fp8_gemm", calls, tmp_path_factory.mktemp("fp8_interp"))
    return list(zip(calls, results, strict=True))


def test_exact_inputs_match_reference_bit_for_bit(interpreted):
    rows = [(args, r) for (name, args), r in interpreted if name == "gemm"][:len(EXACT)]
    for (a, w, sa, sw, b, od), r in rows:
        assert r["launches"] == {"fp8_gemm": 1}
        ref = fp8_gemm_reference(a, w, sa, sw, b, od)
        assert r["out"].dtype == od and torch.equal(r["out"], ref), tuple(a.shape) + tuple(w.shape)


def test_full_range_inputs_match_reference(interpreted):
    rows = [(args, r) for (name, args), r in interpreted if name == "gemm"][len(EXACT):]
    assert len(rows) == len(SPREAD)
    for (a, w, sa, sw, b, od), r in rows:
        assert r["launches"] == {"fp8_gemm": 1}
        exact = ((a.double() @ w.double().t()) * (sa.double() * sw.double()) + b.double())
        ref = fp8_gemm_reference(a, w, sa, sw, b, od)
        # fp32 accumulation in another order than the reference: both within fp32 rounding of the exact sum
        scale = (a.double().abs() @ w.double().abs().t()) * (sa.double() * sw.double())
        assert ((r["out"].double() - exact).abs() <= 1e-5 * scale + 1e-6).all()
        assert ((ref.double() - exact).abs() <= 1e-5 * scale + 1e-6).all()


def test_quantlinear_fp8_triton_path_matches_reference_path(interpreted):
    rows = [(args, r) for (name, args), r in interpreted if name == "layer_forward"]
    assert len(rows) == len(LAYERS)
    for (seed, k, n, mode, scheme, gran, bias, x), r in rows:
        assert r["launches"] == {"token_quant": 1, "fp8_gemm": 1}, mode
        layer = make_layer(seed, k, n, mode, scheme, gran, bias)
        layer.kernel = "reference"
        with torch.no_grad():
            ref = layer(x)
        torch.testing.assert_close(r["out"], ref, rtol=1e-5, atol=1e-5)


# --- the gate, the switch and errors (this process) ------------------------------------------------
def test_capability_gate(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    reason = fp8_unsupported_reason("cuda")
    assert "compute capability >= 8.9" in reason and "NVIDIA A100 is sm_80" in reason
    for cap in ((8, 9), (9, 0), (10, 0)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=cap: c)
        assert fp8_unsupported_reason("cuda") is None
    with switch.override(interpret=False):
        assert "runs on CUDA GPUs" in fp8_unsupported_reason("cpu")
    with switch.override(interpret=True):
        assert fp8_unsupported_reason("cpu") is None


def test_unsupported_gpu_raises_when_forced_and_declines_in_auto(monkeypatch):
    a, w = _small_ints((6, 32), 1), _small_ints((16, 32), 2)
    sa, sw, b = _scales(6, 16, True, True, 3)
    monkeypatch.setattr(gemm_ops, "fp8_unsupported_reason", lambda device: "the FP8 GEMM needs sm_89+ (test)")
    monkeypatch.setattr(switch, "use_triton", lambda device_type: True)
    with switch.override(mode="triton"), pytest.raises(
            ConfigError, match=r"SAPIENS2_EDGE_KERNELS=triton: the FP8 GEMM needs sm_89\+"):
        fp8_gemm(a, w, sa, sw, b)
    before = LAUNCHES["fp8_gemm"]
    with switch.override(mode="auto"):
        y = fp8_gemm(a, w, sa, sw, b)
    assert LAUNCHES["fp8_gemm"] == before and torch.equal(y, fp8_gemm_reference(a, w, sa, sw, b, torch.float32))


def test_cpu_default_quantlinear_fp8_unchanged():
    with switch.override(mode="auto", triton=True):
        layer = make_layer(4, 48, 32, "dynamic", "fp8")
    assert layer.auto_kernel is not None
    x = _x((2, 12, 48), 3)
    before = sum(LAUNCHES.values())
    with torch.no_grad(), switch.override(mode="auto", triton=True):
        auto = layer(x)
        layer.kernel = "reference"
        assert torch.equal(auto, layer(x))
    assert sum(LAUNCHES.values()) == before


def test_op_schema():
    a, w = _small_ints((6, 32), 1), _small_ints((16, 32), 2)
    sa, sw, b = _scales(6, 16, True, True, 3)
    # test_schema does arithmetic on the fp8 inputs, which CPU torch has no kernels for
    torch.library.opcheck(torch.ops.sapiens2_edge.fp8_gemm.default, (a, w, sa, sw, b, torch.float32),
                          test_utils=("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("change, error, match", [
    (dict(a=torch.zeros(4, 16, dtype=torch.int8)), InvalidTensorError, "activations must be a 2-D torch.float8_e4m3fn"),
    (dict(w=torch.zeros(8, 16)), InvalidTensorError, "weight must be a 2-D torch.float8_e4m3fn"),
    (dict(sw=torch.ones(3)), InvalidTensorError, "fp8_gemm: weight scales"),
    (dict(od=torch.float64), ConfigError, "fp8_gemm: out_dtype torch.float64 is not supported"),
])
def test_input_errors(change, error, match):
    args = dict(a=torch.zeros(4, 16, dtype=E4M3), w=torch.zeros(8, 16, dtype=E4M3), sa=torch.ones(4, 1),
                sw=torch.ones(8), b=None, od=torch.float32)
    args.update(change)
    with pytest.raises(error, match=match):
        fp8_gemm(args["a"], args["w"], args["sa"], args["sw"], args["b"], args["od"])
