"""Per-token (or static) activation quantization, QuantLinear's input pass: the Triton kernel under
the interpreter against the reference bit for bit (E4M3 rounding included), the op schema and
input errors."""

from __future__ import annotations

import pytest
import torch

from sapiens2_edge.errors import ConfigError, InvalidTensorError
from sapiens2_edge.kernels import switch
from sapiens2_edge.kernels.token_quant.op import per_token_quant
from sapiens2_edge.kernels.token_quant.reference import quant_rows_reference
from tests.test_kernels_int8_gemm import run_interpreted

E4M3 = torch.float8_e4m3fn


def token_quant(x, dtype, static, prefix):
    return per_token_quant(x, dtype, static, prefix)


def _x(shape, seed, dtype=torch.float32):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3
    if len(shape) == 3:
        x[:, :9] *= 10.0
    return x.to(dtype)


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


F32, F16 = torch.float32, torch.float16
QUANT_CASES = [((2, 19, 72), "int8", None, 0, F32), ((2, 19, 72), "int8", 0.02, 9, F32),
               ((2, 13, 48), "fp8", 0.004, 9, F32), ((5, 100), "fp8", None, 0, F32), ((3, 11, 40), "fp8", 0.01, 1, F32),
               ((6, 48), "int8", 0.05, 9, F32), ((5, 100), "int8", None, 0, F16), ((3, 7, 48), "fp8", 0.01, 9, F16)]


def _calls():
    calls = [("token_quant", (_x(shape, 20 + i, dt), q, None if s is None else torch.tensor([s]), p))
             for i, (shape, q, s, p, dt) in enumerate(QUANT_CASES)]
    calls.append(("token_quant", (_e4m3_probe(), "fp8", torch.tensor([1.0]), 0)))
    return calls


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    calls = _calls()
    results = run_interpreted("test_kernels_token_quant", calls, tmp_path_factory.mktemp("tq_interp"))
    return list(zip(calls, results, strict=True))


def _bytes(q):
    return q.view(torch.uint8) if q.dtype == E4M3 else q


def test_quantization_alone_is_bit_exact(interpreted):
    rows = [(args, r) for (name, args), r in interpreted if name == "token_quant"]
    assert len(rows) == len(QUANT_CASES) + 1
    for (x, dtype, static, prefix), r in rows:
        assert r["launches"] == {"token_quant": 1}
        q, s = r["out"]
        qr, sr = quant_rows_reference(x, dtype, static, prefix)
        assert q.dtype == qr.dtype and q.shape == qr.shape and s.shape == sr.shape == (qr.shape[0], 1)
        assert torch.equal(s, sr), (tuple(x.shape), dtype, static)
        assert torch.equal(_bytes(q), _bytes(qr)), (tuple(x.shape), dtype, static)


def test_e4m3_rounding_matches_torch_cast(interpreted):
    (x, _, _, _), r = [(args, r) for (name, args), r in interpreted if name == "token_quant"][-1]
    q, s = r["out"]
    assert float(s) == 1.0
    expected = x.clamp(-448, 448).to(E4M3)  # round to nearest even, saturating
    assert torch.equal(q.view(torch.uint8), expected.view(torch.uint8))


def test_op_schema_and_reference_on_cpu():
    x = _x((2, 12, 32), 1)
    with switch.override(mode="auto"):
        q, s = per_token_quant(x, "int8", torch.tensor([0.05]), 9)
    qr, sr = quant_rows_reference(x, "int8", torch.tensor([0.05]), 9)
    assert torch.equal(q, qr) and torch.equal(s, sr)
    op = torch.ops.sapiens2_edge.quant_rows.default
    torch.library.opcheck(op, (x, "int8", None, 0))
    torch.library.opcheck(op, (x, "fp8", torch.tensor([0.1]), 9),
                          test_utils=("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("call, error, match", [
    (lambda: per_token_quant(torch.randn(2, 8), dtype="int4"), ConfigError,
     "quantized dtype 'int4' is not supported; expected one of int8, fp8"),
    (lambda: per_token_quant(torch.ones(2, 8, dtype=torch.int32)), InvalidTensorError,
     "expected a float32/float16/bfloat16 tensor"),
    (lambda: per_token_quant(torch.randn(2, 8), static_scale=torch.ones(2)), InvalidTensorError,
     "static_scale must hold one value"),
])
def test_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
