"""Attention prologue (QK-RMSNorm + 2-D RoPE skipping the 9 prefix tokens + GQA mapping) run by
the Triton interpreter on tiny shapes against the pure-torch reference and the model's Attention
(tests/test_kernels_references.py checks the reference against the model's own steps)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sapiens2_edge.errors import InvalidTensorError
from sapiens2_edge.kernels import switch
from sapiens2_edge.kernels.attention_prologue import op, reference
from sapiens2_edge.models.arch import NUM_PREFIX_TOKENS
from sapiens2_edge.models.backbone import Attention, RopeEmbedding

HP, WP = 3, 4
T = NUM_PREFIX_TOKENS + HP * WP
# (heads, kv heads, width): real Sapiens2 widths 64 / 80 / 76, MHA and GQA
SHAPES = [(2, 1, 64), (2, 2, 80), (4, 2, 76)]
LAUNCHES = op.LAUNCHES



def _inputs(h, kv, d, dtype, seed=0, b=2):
    """q, k, v as strided views of one fused projection output; QK-norm weights near 1."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(b, T, (h + 2 * kv) * d, generator=g).to(dtype).split([h * d, kv * d, kv * d], dim=-1)
    qw, kw = (1 + 0.2 * torch.randn(d, generator=g)).to(dtype), (1 + 0.2 * torch.randn(d, generator=g)).to(dtype)
    return q, k, v, qw, kw


def _run(args):
    before = LAUNCHES["attention_prologue"]
    out = op.attention_prologue(*args)
    assert LAUNCHES["attention_prologue"] == before + 1
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("h,kv,d", SHAPES)
@pytest.mark.parametrize("expand_kv", [False, True])
def test_bf16_rounding_mode_is_bit_identical(interpret, dtype, h, kv, d, expand_kv):
    """The reference's bf16 RoPE rounding is reproduced exactly (round-to-nearest-even in integers)."""
    q, k, v, qw, kw = _inputs(h, kv, d, dtype)
    sin, cos = RopeEmbedding(d, mode="bf16")(HP, WP)
    args = (q, k, v, qw, kw, sin, cos, h, kv, 1e-6, True, expand_kv)
    out = _run(args)
    ref = reference.attention_prologue(*args)
    kv_out = h if expand_kv else kv
    assert [o.shape for o in out] == [(2, h, T, d), (2, kv_out, T, d), (2, kv_out, T, d)]
    for o, r in zip(out, ref, strict=True):
        assert o.dtype == dtype and o.is_contiguous() and torch.equal(o, r)


@pytest.mark.parametrize("h,kv,d", SHAPES)
def test_fp32_mode_matches_reference(interpret, h, kv, d):
    q, k, v, qw, kw = _inputs(h, kv, d, torch.float32, seed=1)
    sin, cos = RopeEmbedding(d, mode="fp32")(HP, WP)
    args = (q, k, v, qw, kw, sin, cos, h, kv, 1e-6, False, False)
    for o, r in zip(_run(args), reference.attention_prologue(*args), strict=True):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


def test_prefix_tokens_are_normed_but_not_rotated(interpret):
    """Independent of apply_rope: the 9 prefix rows equal plain RMSNorm, the body rows differ."""
    h, kv, d = 2, 1, 64
    q, k, v, qw, kw = _inputs(h, kv, d, torch.float32, seed=2)
    sin, cos = RopeEmbedding(d, mode="fp32")(HP, WP)
    qo, ko, vo = _run((q, k, v, qw, kw, sin, cos, h, kv, 1e-6, False, False))
    normed = F.rms_norm(q.reshape(2, T, h, d), (d,), qw, 1e-6).transpose(1, 2)
    torch.testing.assert_close(qo[:, :, :NUM_PREFIX_TOKENS], normed[:, :, :NUM_PREFIX_TOKENS], rtol=0, atol=1e-6)
    assert (qo[:, :, NUM_PREFIX_TOKENS:] - normed[:, :, NUM_PREFIX_TOKENS:]).abs().max() > 0.1
    # a rotation keeps each (j, j + d/2) pair's length
    pair = lambda x: x[..., : d // 2] ** 2 + x[..., d // 2:] ** 2  # noqa: E731
    torch.testing.assert_close(pair(qo), pair(normed), rtol=1e-5, atol=1e-5)
    assert torch.equal(vo, v.reshape(2, T, kv, d).transpose(1, 2))


def test_gqa_expansion_maps_query_head_to_kv_head(interpret):
    h, kv, d = 4, 2, 16
    q, k, v, qw, kw = _inputs(h, kv, d, torch.float32, seed=3)
    _, kg, vg = _run((q, k, v, None, None, None, None, h, kv, 1e-6, False, True))
    kn = k.reshape(2, T, kv, d).transpose(1, 2)
    vn = v.reshape(2, T, kv, d).transpose(1, 2)
    for n in range(h):  # spec 1.5: query head n uses kv head n // (h / kv)
        assert torch.equal(kg[:, n], kn[:, n // 2]) and torch.equal(vg[:, n], vn[:, n // 2])


def test_without_norm_or_rope_is_a_layout_change(interpret):
    q, k, v, _, _ = _inputs(2, 2, 16, torch.float16, seed=4)
    qo, ko, vo = _run((q, k, v, None, None, None, None, 2, 2, 1e-6, True, False))
    for o, x in ((qo, q), (ko, k), (vo, v)):
        assert torch.equal(o, x.reshape(2, T, 2, 16).transpose(1, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attention_module_with_kernels_matches_reference(dtype):
    torch.manual_seed(5)
    attn = Attention(4 * 76, 4, 2).to(dtype).eval()
    assert attn.fused  # auto with Triton installed: the fused path is chosen at construction
    with torch.no_grad():
        attn.q_norm.weight.normal_(1, 0.2)
        attn.gamma.weight.normal_(0, 1)
    x = torch.randn(1, T, 4 * 76).to(dtype)
    sin, cos = RopeEmbedding(76)(HP, WP)
    with torch.no_grad():
        ref = attn(x, (sin, cos, True))  # auto: CPU tensors take the reference path
        with switch.override(mode="triton"):
            out = _run_module(attn, x, (sin, cos, True))
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-4)


def _run_module(attn, x, rope):
    before = LAUNCHES["attention_prologue"]
    out = attn(x, rope)
    assert LAUNCHES["attention_prologue"] == before + 1
    return out


def test_export_traces_the_reference(interpret):
    attn = Attention(64, 4, 2).eval()
    sin, cos = RopeEmbedding(16)(HP, WP)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x, (sin, cos, True))

    before = LAUNCHES.copy()
    graph = torch.export.export(Wrap(), (torch.randn(1, T, 64),), strict=False).graph_module.code
    assert LAUNCHES == before and "sapiens2_edge" not in graph and "repeat_interleave" in graph


def test_custom_op_passes_opcheck(interpret):
    q, k, v, qw, kw = _inputs(2, 1, 16, torch.float32, b=1)
    sin, cos = RopeEmbedding(16)(HP, WP)
    torch.library.opcheck(op.attention_prologue_op, (q, k, v, qw, kw, sin, cos, 2, 1, 1e-6, True, False))


def _z(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


@pytest.mark.parametrize("args,message", [
    ((_z(1, T, 32), _z(1, T, 16), _z(1, T), None, None, None, None, 2, 1), "must be \\(B, T, heads\\*d\\)"),
    ((_z(1, T, 32, dtype=torch.int8), _z(1, T, 16), _z(1, T, 16), None, None, None, None, 2, 1), "dtypes"),
    ((_z(1, T, 32), _z(1, T, 16), _z(1, T, 16), None, None, None, None, 2, 3), "do not divide"),
    ((_z(1, T, 32), _z(1, T, 32), _z(1, T, 16), None, None, None, None, 2, 1), "do not fit"),
    ((_z(1, T, 32), _z(1, T, 16), _z(1, T, 16), _z(16), None, None, None, 2, 1), "both QK-norm weights"),
    ((_z(1, T, 32), _z(1, T, 16), _z(1, T, 16), _z(8), _z(8), None, None, 2, 1), "head width 16"),
    ((_z(1, T, 32), _z(1, T, 16), _z(1, T, 16), None, None, _z(12, 16), None, 2, 1), "both RoPE tables"),
    ((_z(1, T, 32), _z(1, T, 16), _z(1, T, 16), None, None, _z(T + 1, 16), _z(T + 1, 16), 2, 1), "RoPE tables"),
    ((_z(1, 32, T).transpose(1, 2), _z(1, T, 16), _z(1, T, 16), None, None, None, None, 2, 1), "unit stride"),
])
def test_bad_inputs_raise_typed_errors(args, message):
    with pytest.raises(InvalidTensorError, match=message):
        op.launch(*args, 1e-6, True, False)
