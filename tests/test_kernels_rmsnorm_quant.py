"""RMSNorm fused with per-token quantization (and the quantization alone, QuantLinear's input
pass): the Triton kernel under the interpreter against the reference, E4M3 rounding bit for bit,
the SmoothQuant-folded norm feeding the INT8 GEMM, the op schema and input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sapiens2_edge.errors import ConfigError, InvalidTensorError
from sapiens2_edge.kernels.int8_gemm import int8_gemm_reference
from sapiens2_edge.kernels.rmsnorm_quant import per_token_quant, quant_rows_reference, rmsnorm_quant
from sapiens2_edge.quantization import numerics as nx
from sapiens2_edge.quantization.smoothquant import smoothing_scales
from tests.test_kernels_int8_gemm import run_interpreted

E4M3 = torch.float8_e4m3fn
EPS = 1e-6


def norm_quant(x, weight, dtype, static, prefix):
    return rmsnorm_quant(x, weight, EPS, dtype, static, prefix)


def token_quant(x, dtype, static, prefix):
    return per_token_quant(x, dtype, static, prefix)


def smooth_pipeline(x, g_smoothed, w_q, w_scale):
    from sapiens2_edge.kernels.int8_gemm import int8_gemm

    q, s = rmsnorm_quant(x, g_smoothed, EPS, "int8")
    return int8_gemm(q, w_q, s, w_scale, None, torch.float32)


def _x(shape, seed, dtype=torch.float32):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3
    if len(shape) == 3:
        x[:, :9] *= 10.0
    return x.to(dtype)


def _weight(k, seed):
    return torch.rand(k, generator=torch.Generator().manual_seed(seed)) + 0.5


def _e4m3_probe():
    """Values over every E4M3 binade, exact ties, subnormals, signed zeros and values past 448."""
    codes = torch.arange(256, dtype=torch.uint8).view(E4M3).float()
    codes = codes[torch.isfinite(codes)]
    mids = (codes[:-1] + codes[1:]) / 2  # the codes come sorted by bits, not by value: mixed ties
    g = torch.Generator().manual_seed(0)
    rand = torch.exp2(torch.empty(2000).uniform_(-12, 9.5, generator=g)) * torch.where(
        torch.rand(2000, generator=g) < 0.5, -1.0, 1.0)
    v = torch.cat([codes, mids, rand, torch.tensor([0.0, -0.0, 448.0, 460.0, 464.0, -500.0, 2.0 ** -10, -(2.0 ** -10)])])
    return v.reshape(1, -1)


NORM_CASES = [((2, 19, 72), "int8", torch.float32), ((2, 19, 72), "fp8", torch.float32),
              ((5, 100), "int8", torch.float16), ((3, 7, 48), "fp8", torch.float16)]
QUANT_CASES = [((2, 19, 72), "int8", None, 0), ((2, 19, 72), "int8", 0.02, 9), ((2, 13, 48), "fp8", 0.004, 9),
               ((5, 100), "fp8", None, 0), ((3, 11, 40), "fp8", 0.01, 1), ((6, 48), "int8", 0.05, 9)]


def _smooth_case():
    g = torch.Generator().manual_seed(11)
    k, n = 64, 48
    x = torch.randn(2, 15, k, generator=g)
    x[..., 5] *= 30.0  # an outlier channel that SmoothQuant moves into the weights
    gamma = torch.rand(k, generator=g) + 0.5
    w = torch.randn(n, k, generator=g) * 0.1
    act_max = F.rms_norm(x, (k,), gamma, EPS).abs().amax(dim=(0, 1))
    s = smoothing_scales(act_max, [w], 0.5)
    w_q, w_scale = nx.quantize_weight(w * s[None, :], "int8")
    return (x, gamma / s, w_q, w_scale), (x, gamma, w)


def _calls():
    calls = [("norm_quant", (_x(shape, i, dt), _weight(shape[-1], i), q, None, 0))
             for i, (shape, q, dt) in enumerate(NORM_CASES)]
    calls.append(("norm_quant", (_x((2, 13, 48), 9), _weight(48, 9), "int8", torch.tensor([0.05]), 9)))
    calls += [("token_quant", (_x(shape, 20 + i), q, None if s is None else torch.tensor([s]), p))
              for i, (shape, q, s, p) in enumerate(QUANT_CASES)]
    calls.append(("token_quant", (_e4m3_probe(), "fp8", torch.tensor([1.0]), 0)))
    calls.append(("smooth_pipeline", _smooth_case()[0]))
    return calls


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    calls = _calls()
    results = run_interpreted("test_kernels_rmsnorm_quant", calls, tmp_path_factory.mktemp("rq_interp"))
    return list(zip(calls, results, strict=True))


def _bytes(q):
    return q.view(torch.uint8) if q.dtype == E4M3 else q


def test_quantization_alone_is_bit_exact(interpreted):
    rows = [(args, r) for (name, args), r in interpreted if name == "token_quant"]
    assert len(rows) == len(QUANT_CASES) + 1
    for (x, dtype, static, prefix), r in rows:
        assert r["launches"] == {"rmsnorm_quant": 1}
        q, s = r["out"]
        qr, sr = quant_rows_reference(x, None, 0.0, dtype, static, prefix)
        assert q.dtype == qr.dtype and q.shape == qr.shape and s.shape == sr.shape == (qr.shape[0], 1)
        assert torch.equal(s, sr), (tuple(x.shape), dtype, static)
        assert torch.equal(_bytes(q), _bytes(qr)), (tuple(x.shape), dtype, static)


def test_e4m3_rounding_matches_torch_cast(interpreted):
    (x, _, _, _), r = [(args, r) for (name, args), r in interpreted if name == "token_quant"][-1]
    q, s = r["out"]
    assert float(s) == 1.0
    expected = x.clamp(-448, 448).to(E4M3)  # round to nearest even, saturating
    assert torch.equal(q.view(torch.uint8), expected.view(torch.uint8))


def test_rmsnorm_quant_matches_reference(interpreted):
    rows = [(args, r) for (name, args), r in interpreted if name == "norm_quant"]
    assert len(rows) == len(NORM_CASES) + 1
    for (x, w, dtype, static, prefix), r in rows:
        assert r["launches"] == {"rmsnorm_quant": 1}
        q, s = r["out"]
        qr, sr = quant_rows_reference(x, w, EPS, dtype, static, prefix)
        torch.testing.assert_close(s, sr, rtol=2e-6, atol=0)
        # the norm's rsqrt / summation order may move a value across a rounding boundary: by one
        # step at most, and rarely
        deq, deq_r = q.float() * s, qr.float() * sr
        step = (2.0 ** (torch.floor(torch.log2(deq_r.abs().clamp_min(1e-30))) - 3)).clamp_min(2.0 ** -9 * sr) \
            if dtype == "fp8" else sr
        assert ((deq - deq_r).abs() <= step * 1.0001).all(), dtype
        assert (_bytes(q) != _bytes(qr)).float().mean() < 0.01
        # and the dequantized values are the normalised input within half a step
        y = F.rms_norm(x.float(), (x.shape[-1],), w, EPS).reshape(q.shape)
        if static is None:
            bound = 0.5 * sr + 1e-6 if dtype == "int8" else y.abs() * 2.0 ** -4 + 2.0 ** -10 * sr
            assert ((deq - y).abs() <= bound * 1.0001).all()


def test_smoothquant_folded_norm_feeds_int8_gemm(interpreted):
    (_, r), = [(args, r) for (name, args), r in interpreted if name == "smooth_pipeline"]
    assert r["launches"] == {"rmsnorm_quant": 1, "int8_gemm": 1}
    (x, g_s, w_q, w_scale), (x0, gamma, w) = _smooth_case()
    exact = F.rms_norm(x0, (x0.shape[-1],), gamma, EPS) @ w.t()
    assert nx.tensor_sqnr_db(exact.reshape(-1, w.shape[0]), r["out"]) > 30.0
    q, s = quant_rows_reference(x, g_s, EPS, "int8")
    torch.testing.assert_close(r["out"], int8_gemm_reference(q, w_q, s, w_scale, None, torch.float32),
                               rtol=1e-2, atol=1e-2)


def test_op_schema_and_reference_on_cpu(monkeypatch):
    monkeypatch.delenv("SAPIENS2_EDGE_KERNELS", raising=False)
    x, w = _x((2, 12, 32), 1), _weight(32, 1)
    q, s = rmsnorm_quant(x, w, EPS, "int8")
    qr, sr = quant_rows_reference(x, w, EPS, "int8")
    assert torch.equal(q, qr) and torch.equal(s, sr)
    op = torch.ops.sapiens2_edge.quant_rows.default
    torch.library.opcheck(op, (x, w, EPS, "int8", None, 0))
    torch.library.opcheck(op, (x, None, 0.0, "fp8", torch.tensor([0.1]), 9),
                          test_utils=("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("call, error, match", [
    (lambda: rmsnorm_quant(torch.randn(2, 8), torch.ones(8), dtype="int4"), ConfigError,
     "quantized dtype 'int4' is not supported; expected one of int8, fp8"),
    (lambda: rmsnorm_quant(torch.randn(2, 8), torch.ones(6)), InvalidTensorError, r"norm weight must have shape \(8,\)"),
    (lambda: per_token_quant(torch.ones(2, 8, dtype=torch.int32)), InvalidTensorError,
     "expected a float32/float16/bfloat16 tensor"),
    (lambda: per_token_quant(torch.randn(2, 8), static_scale=torch.ones(2)), InvalidTensorError,
     "static_scale must hold one value"),
])
def test_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
