"""Quantization arithmetic against hand-computed values and independent references."""

from __future__ import annotations

import math

import pytest
import torch

from sapiens2_edge.kernels import numerics as nx
from sapiens2_edge.quantization.config import layer_config
from sapiens2_edge.quantization.linear import QuantLinear


# --- int8 weights ---------------------------------------------------------------------------------
def test_int8_per_channel_weight_hand_computed():
    w = torch.tensor([[127.0, -50.4, 12.6, 0.0],
                      [2.54, -1.0, 0.3, 0.0]])
    q, s = nx.quantize_weight(w, "int8", "per_channel")
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (2,)
    torch.testing.assert_close(s, torch.tensor([1.0, 0.02]))
    assert q.tolist() == [[127, -50, 13, 0], [127, -50, 15, 0]]
    torch.testing.assert_close(nx.dequantize_weight(q, s),
                               torch.tensor([[127.0, -50.0, 13.0, 0.0], [2.54, -1.0, 0.3, 0.0]]))


def test_int8_per_tensor_weight_and_zero_rows():
    w = torch.tensor([[127.0, -50.4, 12.6, 0.0], [2.54, -1.0, 0.3, 0.0]])
    q, s = nx.quantize_weight(w, "int8", "per_tensor")
    assert s.tolist() == [1.0]
    assert q.tolist() == [[127, -50, 13, 0], [3, -1, 0, 0]]
    q, s = nx.quantize_weight(torch.zeros(2, 8), "int8")
    assert (q == 0).all() and (s > 0).all()  # no division by zero


def test_int8_rounds_half_to_even_and_never_produces_minus_128():
    q = nx.quantize_int8(torch.tensor([0.5, 1.5, 2.5, -0.5, -200.0, 200.0]), torch.tensor(1.0))
    assert q.tolist() == [0, 2, 2, 0, -127, 127]


def test_per_token_activation_scales_hand_computed():
    x = torch.tensor([[1.0, -4.0, 2.0], [0.5, 0.25, -0.125], [0.0, 0.0, 0.0]])
    s = nx.token_scales(x, "int8")
    assert s.shape == (3, 1)
    torch.testing.assert_close(s[:2, 0], torch.tensor([4.0 / 127, 0.5 / 127]))
    assert s[2, 0] > 0
    assert nx.quantize_int8(x, s).tolist() == [[32, -127, 64], [127, 64, -32], [0, 0, 0]]
    torch.testing.assert_close(nx.token_scales(x, "fp8")[:2, 0], torch.tensor([4.0 / 448, 0.5 / 448]))


def test_static_scales_keep_prefix_tokens_dynamic():
    x = torch.ones(2, 12, 4)
    x[:, :9] *= 1000.0
    s = nx.activation_scales(x, "int8", torch.tensor([0.5]), prefix_tokens=9).view(2, 12)
    torch.testing.assert_close(s[:, :9], torch.full((2, 9), 1000.0 / 127))
    torch.testing.assert_close(s[:, 9:], torch.full((2, 3), 0.5))


# --- fp8 ------------------------------------------------------------------------------------------
def _e4m3_values() -> list[float]:
    """Every non-negative finite E4M3 (fn) value in code order (code parity = mantissa parity)."""
    vals = [m * 2.0**-9 for m in range(8)]  # exponent field 0: zero and subnormals
    for e in range(1, 16):
        for m in range(8):
            if e == 15 and m == 7:
                continue  # NaN
            vals.append((1 + m / 8) * 2.0 ** (e - 7))
    return vals


def _round_e4m3_reference(x: float) -> float:
    vals = _e4m3_values()
    a = min(abs(x), 448.0)
    best = min(range(len(vals)), key=lambda i: (abs(vals[i] - a), i % 2))  # ties -> even code
    return math.copysign(vals[best], x)


def test_fp8_known_values():
    x = torch.tensor([1000.0, 448.0, 464.0, 460.0, -500.0, 2.0**-9, 2.0**-10, 3 * 2.0**-10, 2.0**-6,
                      1.0625, 1.1, 1.1875, 300.0, 0.0])
    want = [448.0, 448.0, 448.0, 448.0, -448.0, 2.0**-9, 0.0, 2.0**-8, 2.0**-6,
            1.0, 1.125, 1.25, 288.0, 0.0]
    got = nx.to_e4m3(x)
    assert got.dtype == torch.float8_e4m3fn
    assert got.float().tolist() == want
    assert not torch.isnan(got.float()).any()
    assert max(_e4m3_values()) == 448.0 and len(_e4m3_values()) == 127


def test_fp8_rounding_matches_independent_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.exp(torch.empty(3000).uniform_(-12, 7, generator=g)) * torch.sign(torch.randn(3000, generator=g))
    got = nx.to_e4m3(x).float().tolist()
    want = [_round_e4m3_reference(v) for v in x.tolist()]
    assert got == want


def test_fp8_weight_per_channel():
    w = torch.tensor([[448.0, 1.0, -0.3], [0.896, 0.002, -0.5]])
    q, s = nx.quantize_weight(w, "fp8")
    torch.testing.assert_close(s, torch.tensor([1.0, 0.002]))
    assert q.dtype == torch.float8_e4m3fn
    assert q.float()[0].tolist() == [448.0, 1.0, -0.3125]
    assert q.float()[1].tolist() == [448.0, 1.0, -256.0]


# --- int8 GEMM ------------------------------------------------------------------------------------
def test_int_mm_equals_exact_emulation():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (33, 64), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (40, 64), generator=g, dtype=torch.int8)
    assert nx.int_mm_supported(33, 64, 40)
    fast = torch._int_mm(a, w.t())
    ref = nx.int8_matmul_reference(a, w)
    assert fast.dtype == ref.dtype == torch.int32
    assert torch.equal(fast, ref)
    assert torch.equal(ref, (a.long() @ w.long().t()).int())  # int64 cross-check
    assert not nx.int_mm_supported(16, 64, 40) and not nx.int_mm_supported(33, 60, 40)


@pytest.mark.parametrize("int8_dot", [True, False], ids=["cpu-with-int8-dot", "cpu-without"])
def test_quantlinear_int_mm_path_bit_exact_with_reference(monkeypatch, int8_dot):
    """A CPU with int8 dot products runs torch._int_mm; one without runs float32 GEMMs (its
    torch._int_mm is a plain loop); both give the reference's integers."""
    calls = []
    real = torch._int_mm

    def counting(a, b):
        calls.append(a.shape)
        return real(a, b)

    monkeypatch.setattr(torch, "_int_mm", counting)
    monkeypatch.setattr(nx, "_cpu_int8_dot", lambda: int8_dot)
    real_float = nx.int8_matmul_float
    float_calls = []
    monkeypatch.setattr(nx, "int8_matmul_float", lambda a, w: float_calls.append(a.dtype) or real_float(a, w))
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(64, 48)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 64, generator=g))
    for mode in ("dynamic", "static"):
        cfg = layer_config("int8", activation_mode=mode)
        ql = QuantLinear.from_float(lin, cfg, prefix_tokens=9, input_scale=torch.tensor([0.02]))
        x = torch.randn(2, 20, 64, generator=g)
        calls.clear()
        float_calls.clear()
        fast = ql(x)
        assert bool(calls) == int8_dot, "torch._int_mm ran where it should not, or did not run"
        assert float_calls == ([] if int8_dot else [torch.float32])  # no int8 cast of the activation there
        ql.kernel = "reference"
        calls.clear()
        ref = ql(x)
        assert not calls
        assert torch.equal(fast, ref)
        # small batches (M <= 16) take the emulation on the default path too
        ql.kernel = "auto"
        calls.clear()
        ql(torch.randn(1, 5, 64, generator=g))
        assert not calls


def _large_int8_operands(m: int, k: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 operands whose dot products run far past 2**24 (|q| in 100..127, a few negatives)."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.rand(m, k, generator=g) < 0.02, -1, 1)
    a = (torch.randint(100, 128, (m, k), generator=g, dtype=torch.int16) * sign).to(torch.int8)
    w = torch.randint(100, 128, (n, k), generator=g, dtype=torch.int16).to(torch.int8)
    return a, w


def test_int8_matmul_fp32_is_exact_past_float32s_integers(monkeypatch):
    a, w = _large_int8_operands(64, 8192, 48)
    exact = (a.long() @ w.long().t()).int()
    assert exact.abs().max() > 2**26  # the sums themselves are far beyond float32's exact integers
    out = nx.int8_matmul_fp32(a, w)
    assert out.dtype == torch.int32 and torch.equal(out, exact)
    odd = nx.int8_matmul_fp32(a[:, :1000], w[:, :1000])  # K not a multiple of the slice
    assert torch.equal(odd, (a[:, :1000].long() @ w[:, :1000].long().t()).int())
    # the slice bound is what makes it exact: twice as long a slice already loses integers here
    monkeypatch.setattr(nx, "FP32_EXACT_K", 2 * nx.FP32_EXACT_K)
    assert not torch.equal(nx.int8_matmul_fp32(a, w), exact)


def test_int8_matmul_fp32_falls_back_to_float64_when_float32_matmuls_round(monkeypatch):
    a, w = _large_int8_operands(32, 2048, 16, seed=1)
    used = []
    real = nx.int8_matmul_reference
    monkeypatch.setattr(nx, "int8_matmul_reference", lambda a, w: used.append(1) or real(a, w))
    assert torch.equal(nx.int8_matmul_fp32(a, w), (a.long() @ w.long().t()).int()) and not used
    monkeypatch.setattr(torch.backends.mkldnn.matmul, "fp32_precision", "bf16")
    assert torch.equal(nx.int8_matmul_fp32(a, w), (a.long() @ w.long().t()).int()) and used


@pytest.mark.parametrize("k", [1000, 8192])
def test_int8_matmul_float_is_the_int32_products_rounded_once(k, monkeypatch):
    a, w = _large_int8_operands(24, k, 40, seed=3)
    exact = (a.long() @ w.long().t()).int()
    out = nx.int8_matmul_float(a.float(), w)
    assert out.dtype == torch.float32 and torch.equal(out, exact.float())
    if k > nx.FP32_EXACT_K:  # past float32's integers: one rounding of the exact sum, not one per slice
        assert exact.abs().max() > 2**26 and not torch.equal(exact.float().long().int(), exact)
    monkeypatch.setattr(torch.backends.mkldnn.matmul, "fp32_precision", "bf16")
    assert torch.equal(nx.int8_matmul_float(a.float(), w), exact.float())


@pytest.mark.parametrize("dtype", [torch.int32, torch.float32])
def test_rescaling_by_blocks_of_rows_is_the_whole_product_of_scales(dtype, monkeypatch):
    from sapiens2_edge.quantization import linear as qlinear

    g = torch.Generator().manual_seed(4)
    acc = torch.randint(-2**20, 2**20, (37, 24), generator=g, dtype=torch.int32)
    s_a, s_w = torch.rand(37, 1, generator=g) / 100, torch.rand(1, 24, generator=g) / 100
    ref = acc.float() * (s_a * s_w)
    monkeypatch.setattr(qlinear, "_SCALE_BLOCK_FLOATS", 5 * 24)  # blocks of 5 rows, the last one short
    out = qlinear._scaled(acc.clone().to(dtype), s_a, s_w)  # written into its argument's memory
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    one = torch.rand(1, 1, generator=g)
    assert torch.equal(qlinear._scaled(acc.clone().to(dtype), one, s_w), acc.float() * (one * s_w))
    # not the same as scaling by each factor in turn, which the blocks must not do
    assert not torch.equal(acc.float() * s_a * s_w, ref)


def test_an_exported_quantized_linear_rescales_in_one_multiplication(monkeypatch):
    from sapiens2_edge.quantization import linear as qlinear

    g = torch.Generator().manual_seed(5)
    lin = torch.nn.Linear(64, 48)
    ql = QuantLinear.from_float(lin, layer_config("int8", activation_mode="static"), prefix_tokens=2,
                                input_scale=torch.tensor([0.02]))
    x = torch.randn(1, 40, 64, generator=g)

    def slices() -> int:
        program = torch.export.export(ql, (x,))
        return sum(n.op == "call_function" and "slice" in str(n.target) for n in program.graph.nodes)

    whole = slices()
    monkeypatch.setattr(qlinear, "_SCALE_BLOCK_FLOATS", 5 * 48)  # eager: 8 blocks of rows
    assert slices() == whole
    with torch.no_grad():
        assert torch.equal(ql(x), torch.export.export(ql, (x,)).module()(x))


def test_quantlinear_w8a8_matches_hand_written_fake_quant():
    g = torch.Generator().manual_seed(2)
    lin = torch.nn.Linear(32, 24)
    x = torch.randn(3, 7, 32, generator=g)
    ql = QuantLinear.from_float(lin, layer_config("int8"))
    w = lin.weight.detach().double()
    sw = w.abs().amax(1, keepdim=True) / 127
    wq = torch.round(w / sw).clamp(-127, 127) * sw
    xd = x.double()
    sx = xd.abs().amax(-1, keepdim=True) / 127
    xq = torch.round(xd / sx).clamp(-127, 127) * sx
    ref = xq @ wq.t() + lin.bias.detach().double()
    torch.testing.assert_close(ql(x).double(), ref, rtol=1e-5, atol=1e-5)


def test_sqnr():
    assert nx.sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert nx.sqnr_db(1.0, 0.0) == math.inf
