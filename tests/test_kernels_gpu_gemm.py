"""Quantized GEMMs and the activation quantization on a real GPU, at Sapiens2 shapes.

Accuracy rule (FlashAttention's): against a float64 evaluation of the same quantized problem,
the kernel's error is at most twice that of the PyTorch path producing the same output dtype
(``torch._int_mm`` + float32 epilogue, ``torch._scaled_mm``), plus a float32-rounding floor.
"""

from __future__ import annotations

import pytest
import torch

from sapiens2_edge.kernels import numerics as nx
from sapiens2_edge.kernels import switch
from sapiens2_edge.kernels.scaled_gemm.op import LAUNCHES, int8_gemm
from sapiens2_edge.kernels.scaled_gemm.reference import int8_gemm_reference
from sapiens2_edge.kernels.token_quant.op import per_token_quant
from sapiens2_edge.kernels.token_quant.reference import quant_rows_reference
from sapiens2_edge.quantization.config import layer_config
from sapiens2_edge.quantization.linear import QuantLinear

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TOKENS = 3081  # 1024x768 input: 64x48 patches + 9 prefix tokens
# (K, N): 0.4b qkv/proj, 0.4b w12 and w3, 1b GQA k/v (half the heads), 1b w3
SHAPES = [(1024, 1024), (1024, 8192), (4096, 1024), (1536, 768), (6144, 1536)]
OUT_DTYPES = [torch.bfloat16, torch.float16, torch.float32]


@pytest.fixture(autouse=True)
def auto_mode():
    """The default switch (Triton on CUDA tensors), whatever the environment forces."""
    with switch.override(mode="auto"):
        yield


def _fp8_ok() -> bool:
    return torch.cuda.get_device_capability() >= (8, 9)


def _problem(k, n, qdtype, m=TOKENS, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, k, device="cuda", generator=g)
    x[:9] *= 20.0
    w = torch.randn(n, k, device="cuda", generator=g) * 0.05
    wq, sw = nx.quantize_weight(w, qdtype)
    sa = nx.token_scales(x, qdtype)
    a = nx.quantize_activation(x, sa, qdtype)
    bias = torch.randn(n, device="cuda", generator=g)
    return a, wq, sa, sw, bias


def _exact(a, w, sa, sw, bias):
    return (a.double() @ w.double().t()) * (sa.double() * sw.double()[None, :]) + bias.double()


def _within_rule(ours, base, exact, what):
    err, err_base = (ours.double() - exact).abs().max().item(), (base.double() - exact).abs().max().item()
    floor = 1e-6 * exact.abs().max().item()
    assert err <= 2 * err_base + floor, f"{what}: error {err:.3g} vs PyTorch path {err_base:.3g}"


@pytest.mark.parametrize("k, n", SHAPES)
def test_int8_accumulation_bit_exact(k, n):
    from sapiens2_edge.kernels.scaled_gemm.op import launch_scaled_gemm

    a, w, *_ = _problem(k, n, "int8")
    for m in (TOKENS, 2 * TOKENS, 17):
        acc = launch_scaled_gemm(a[:m].contiguous(), w, None, None, None, torch.float32, epilogue=False)
        assert torch.equal(acc, nx.int8_matmul(a[:m].contiguous(), w)), (m, k, n)


@pytest.mark.parametrize("k, n", SHAPES[:3])
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_int8_gemm_accuracy(k, n, out_dtype):
    a, w, sa, sw, bias = _problem(k, n, "int8")
    before = LAUNCHES["int8_gemm"]
    ours = int8_gemm(a, w, sa, sw, bias, out_dtype)
    assert LAUNCHES["int8_gemm"] == before + 1 and ours.dtype == out_dtype
    base = int8_gemm_reference(a, w, sa, sw, bias, out_dtype)  # torch._int_mm + fp32 epilogue
    _within_rule(ours, base, _exact(a, w, sa, sw, bias), f"int8 {k}x{n} {out_dtype}")


@pytest.mark.parametrize("k, n", SHAPES[:3])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_fp8_gemm_accuracy(k, n, out_dtype):
    from sapiens2_edge.kernels.scaled_gemm.op import fp8_gemm
    from sapiens2_edge.kernels.scaled_gemm.reference import fp8_gemm_reference

    if not _fp8_ok():
        pytest.skip("FP8 needs compute capability >= 8.9")
    a, w, sa, sw, bias = _problem(k, n, "fp8")
    before = LAUNCHES["fp8_gemm"]
    ours = fp8_gemm(a, w, sa, sw, bias, out_dtype)
    assert LAUNCHES["fp8_gemm"] == before + 1
    if out_dtype == torch.bfloat16:  # rowwise-scaled torch._scaled_mm produces bf16
        base = torch._scaled_mm(a, w.t(), scale_a=sa, scale_b=sw.reshape(1, -1), out_dtype=torch.bfloat16)
        base = (base.float() + bias).to(out_dtype)
    else:
        base = fp8_gemm_reference(a, w, sa, sw, bias, out_dtype)
    _within_rule(ours, base, _exact(a, w, sa, sw, bias), f"fp8 {k}x{n} {out_dtype}")


def test_fp8_forced_on_old_gpu_is_a_config_error():
    from sapiens2_edge.errors import ConfigError
    from sapiens2_edge.kernels.scaled_gemm.op import fp8_gemm

    if _fp8_ok():
        pytest.skip("this GPU has FP8")
    a = torch.zeros(32, 64, device="cuda").to(torch.float8_e4m3fn)
    with switch.override(mode="triton"), pytest.raises(ConfigError, match="compute capability >= 8.9"):
        fp8_gemm(a, a, torch.ones(32, 1, device="cuda"), torch.ones(64, device="cuda"))


@pytest.mark.parametrize("qdtype", ["int8", "fp8"])
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16])
def test_token_quant_bit_exact(qdtype, in_dtype):
    g = torch.Generator(device="cuda").manual_seed(1)
    x = (torch.randn(2, TOKENS, 1024, device="cuda", generator=g) * 3).to(in_dtype)
    for static, prefix in ((None, 0), (torch.tensor([0.02], device="cuda"), 9)):
        q, s = per_token_quant(x, qdtype, static, prefix)
        qr, sr = quant_rows_reference(x, qdtype, static, prefix)
        assert torch.equal(s, sr)
        assert torch.equal(q.view(torch.uint8), qr.view(torch.uint8))


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_quantlinear_cuda_uses_triton_and_compiles(scheme, mode):
    if scheme == "fp8" and not _fp8_ok():
        pytest.skip("FP8 needs compute capability >= 8.9")
    torch.manual_seed(0)
    lin = torch.nn.Linear(1024, 4096, device="cuda")
    layer = QuantLinear.from_float(lin, layer_config(scheme, activation_mode=mode), prefix_tokens=9,
                                   input_scale=torch.tensor([0.03], device="cuda"))
    x = torch.randn(2, TOKENS, 1024, device="cuda").to(torch.bfloat16)
    gemm = "int8_gemm" if scheme == "int8" else "fp8_gemm"
    before = LAUNCHES[gemm], LAUNCHES["token_quant"]
    with torch.no_grad():
        ours = layer(x)
        assert (LAUNCHES[gemm], LAUNCHES["token_quant"]) == (before[0] + 1, before[1] + 1)
        compiled = torch.compile(layer, fullgraph=True)(x)
        layer.kernel = "reference"
        ref = layer(x)
    assert ours.dtype == torch.bfloat16 and ours.shape == ref.shape
    # same quantized inputs, same fp32 epilogue; only the bf16 output rounding and the summation
    # order differ
    torch.testing.assert_close(ours.float(), ref.float(), rtol=1.6e-2, atol=1e-2)
    torch.testing.assert_close(compiled.float(), ours.float(), rtol=1.6e-2, atol=1e-2)
