"""Long bf16 attention products on OpenVINO's CPU kernel (the bf16 calibration forwards'), against a
float64 attention computed here and against torch's own bf16 kernel."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("openvino")

from sapiens2_edge.kernels import openvino_attention as ova  # noqa: E402
from sapiens2_edge.kernels import switch  # noqa: E402
from sapiens2_edge.models import bf16 as bf16_forwards  # noqa: E402
from sapiens2_edge.models.backbone import Attention  # noqa: E402
from sapiens2_edge.quantization import calibration, quantize  # noqa: E402
from tests.fixtures.tiny import INPUT, tiny_model  # noqa: E402


def attention64(q, k, v):
    """softmax(q k^T / sqrt(d)) v per head in float64, (B, T, heads, d) in and (B, T, C) out; kv head j
    serves query heads j * groups ... (j + 1) * groups - 1."""
    b, t, h, d = q.shape
    groups = h // k.shape[2]
    k, v = (x.double().repeat_interleave(groups, dim=2) for x in (k, v))
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k) / math.sqrt(d)
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, t, h * d)


def qkv(tokens: int, heads: int = 4, kv_heads: int = 4, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, tokens, heads, d, generator=g) * 2
    k = torch.randn(1, tokens, kv_heads, d, generator=g) * 2
    v = torch.randn(1, tokens, kv_heads, d, generator=g)
    return q, k, v


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).norm() / ref.norm())


class Spy:
    """Counts the calls that reach OpenVINO."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = ova.OpenVINOAttention.__call__

        def call(kernel, *args):
            self.calls += 1
            return real(kernel, *args)

        monkeypatch.setattr(ova.OpenVINOAttention, "__call__", call)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_long_bf16_products_run_on_openvino_as_close_as_torchs_bf16(monkeypatch, kv_heads):
    spy = Spy(monkeypatch)
    q, k, v = qkv(ova.MIN_TOKENS + 44, kv_heads=kv_heads)
    ref = attention64(q, k, v)
    product = ova.AttentionProduct(ova.OpenVINOAttention())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = product(*(x.bfloat16() for x in (q, k, v)))
    assert spy.calls == 1 and out.dtype == torch.bfloat16 and out.shape == ref.shape
    with torch.no_grad():
        groups = 4 // kv_heads
        kb, vb = (x.bfloat16().repeat_interleave(groups, dim=2).transpose(1, 2) for x in (k, v))
        theirs = torch.nn.functional.scaled_dot_product_attention(q.bfloat16().transpose(1, 2), kb, vb)
        theirs = theirs.transpose(1, 2).reshape(ref.shape)
    # both are bf16 computations of the same product; OpenVINO's lands about twice as far from float64 as
    # torch's on these sharp random scores (1.1e-2 against 6.3e-3), where OpenVINO rounds differently
    assert rel(out, ref) < 2 * rel(theirs, ref) + 2e-3


@pytest.mark.parametrize("case", ["short", "float32", "grad"])
def test_other_products_take_torchs_kernel_like_the_attention_itself(monkeypatch, case):
    spy = Spy(monkeypatch)
    attn = Attention(64, 4, 2)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 24 if case == "short" else ova.MIN_TOKENS, 64, generator=g)
    if case == "grad":
        x.requires_grad_(True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=case != "float32")
    with torch.set_grad_enabled(case == "grad"), autocast:
        own = attn(x)
        attn.product = ova.AttentionProduct(ova.OpenVINOAttention())
        via_product = attn(x)
    assert spy.calls == 0
    torch.testing.assert_close(via_product, own, rtol=1e-5, atol=1e-6)


def test_calibration_hands_attentions_to_openvino_only_for_bf16_on_a_bf16_cpu(monkeypatch):
    model = tiny_model("seg")
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    own = object()
    attentions[0].product = own  # an export's product of its own is kept
    monkeypatch.setattr(bf16_forwards, "bf16_flags", lambda: (True, "this CPU has avx512_bf16"))
    with calibration.attention_on_openvino(model, "bf16", "cpu") as on:
        assert on
        assert attentions[0].product is own
        assert all(isinstance(m.product, ova.AttentionProduct) for m in attentions[1:])
    assert attentions[0].product is own and all(m.product is None for m in attentions[1:])
    for precision, device in (("fp32", "cpu"), ("bf16", "cuda")):
        with calibration.attention_on_openvino(model, precision, device) as on:
            assert not on and all(m.product is None for m in attentions[1:])
    with switch.override(mode="reference"), calibration.attention_on_openvino(model, "bf16", "cpu") as on:
        assert not on and all(m.product is None for m in attentions[1:])  # torch's kernels only
    monkeypatch.setattr(ova, "available", lambda: False)  # OpenVINO not installed
    with calibration.attention_on_openvino(model, "bf16", "cpu") as on:
        assert not on and all(m.product is None for m in attentions[1:])
    monkeypatch.setattr(ova, "available", lambda: True)
    monkeypatch.setattr(bf16_forwards, "bf16_flags", lambda: (False, "this CPU has no native bf16"))
    with calibration.attention_on_openvino(model, "bf16", "cpu") as on:
        assert not on


def test_bf16_calibration_on_openvino_gives_the_ranges_of_torchs_kernel(monkeypatch):
    g = torch.Generator().manual_seed(2)
    images = [torch.randn(1, 3, *INPUT, generator=g) for _ in range(2)]
    opts = dict(calibration=images, input_size=INPUT, activation_mode="static", calibration_precision="bf16",
                batch_size=1, progress=False)
    monkeypatch.setattr(bf16_forwards, "bf16_flags", lambda: (True, "this CPU has avx512_bf16"))
    monkeypatch.setattr(ova, "available", lambda: False)
    _, plain = quantize(tiny_model("seg"), "int8", **opts)
    monkeypatch.setattr(ova, "available", lambda: True)
    _, short = quantize(tiny_model("seg"), "int8", **opts)  # 57 tokens: every attention on torch's kernel
    assert not any("OpenVINO" in n for n in short.notes)
    monkeypatch.setattr(ova, "MIN_TOKENS", 1)  # the tiny model's 57 tokens go to OpenVINO too
    spy = Spy(monkeypatch)
    _, fast = quantize(tiny_model("seg"), "int8", **opts)
    blocks = len(tiny_model("seg").backbone.blocks)
    assert spy.calls == blocks * len(images)
    assert "calibration's attentions of 1 tokens or more on OpenVINO's bf16 kernel (shorter ones on torch's)" in fast.notes
    assert not any("OpenVINO" in n for n in plain.notes)
    ranges = {lr.name: lr.input_range for lr in plain.layers}
    for lr in fast.layers:  # the same activations up to bf16 rounding in the attention
        assert lr.input_range == pytest.approx(ranges[lr.name], rel=0.05), lr.name
