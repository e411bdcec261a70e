"""Tokenizer kernels (window attention, CLS-only window attention, gather + RMSNorm) run by the
Triton interpreter on tiny shapes against the pure-torch reference and the model's tokenizer."""

from __future__ import annotations

import pytest
import torch

from sapiens2_edge.errors import ConfigError, InvalidTensorError
from sapiens2_edge.kernels import switch
from sapiens2_edge.kernels.window_attention import op, reference
from sapiens2_edge.models.arch import ArchSpec
from sapiens2_edge.models.model import build_model

TOL = {torch.float32: 2e-5, torch.float16: 3e-3}
# (heads, head width): the real Sapiens2 widths 64 (0.4b/1b), 80 (0.8b), 76 (5b)
WIDTHS = [(2, 64), (1, 80), (2, 76)]
LAUNCHES = op.LAUNCHES



def _qkv(n, s, c, dtype, seed=0):
    """q, k, v as strided views of one fused projection output, as a QKV linear would give them."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, s, 3 * c, generator=g).to(dtype).split(c, dim=-1)


def _close(out, ref, dtype):
    assert out.dtype == dtype and out.shape == ref.shape
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= TOL[dtype] * max(1.0, ref.abs().max().item()), err


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads,d", WIDTHS)
def test_window_attention_matches_reference(interpret, dtype, heads, d):
    n = 7  # odd, not a multiple of the windows per program
    q, k, v = _qkv(n, 17, heads * d, dtype)
    before = LAUNCHES["window_attention"]
    out = op.window_attention(q, k, v, heads)
    assert LAUNCHES["window_attention"] == before + 1
    _close(out, reference.window_attention(q.float(), k.float(), v.float(), heads), dtype)
    assert out.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads,d", WIDTHS)
def test_window_attention_cls_matches_reference(interpret, dtype, heads, d):
    n = 5
    q, k, v = _qkv(n, 17, heads * d, dtype, seed=1)
    before = LAUNCHES["window_attention_cls"]
    out = op.window_attention_cls(q[:, 0], k, v, heads)
    assert LAUNCHES["window_attention_cls"] == before + 1
    full = reference.window_attention(q.float(), k.float(), v.float(), heads)
    _close(out, full[:, 0], dtype)


@pytest.mark.parametrize("n,s", [(1, 17), (3, 5), (2, 33)])
def test_window_attention_other_lengths(interpret, n, s):
    q, k, v = _qkv(n, s, 32, torch.float32, seed=2)
    _close(op.window_attention(q, k, v, 2), reference.window_attention(q, k, v, 2), torch.float32)
    _close(op.window_attention_cls(q[:, 0], k, v, 2), reference.window_attention(q, k, v, 2)[:, 0], torch.float32)


def test_window_attention_masks_padding(interpret):
    """Huge values in the padded rows/columns of a bigger buffer must not leak into the result."""
    big = torch.full((3, 32, 3 * 64), 1e4)
    big[:, :17] = torch.randn(3, 17, 3 * 64)
    q, k, v = big[:, :17].split(64, dim=-1)
    _close(op.window_attention(q, k, v, 1), reference.window_attention(q, k, v, 1), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_partition_norm_matches_reference(interpret, dtype):
    b, hp, wp, c = 2, 8, 12, 20  # 2x3 windows per image, non-power-of-two channels
    g = torch.Generator().manual_seed(3)
    # the patch embedding's (B, C, N) output seen as (B, N, C): channel stride != 1
    tokens = torch.randn(b, c, hp * wp, generator=g).to(dtype).transpose(1, 2)
    cls, pos, ln = (torch.randn(*s, generator=g).to(dtype) for s in ((1, 1, c), (1, 17, c), (c,)))
    before = LAUNCHES["window_partition_norm"]
    x, h = op.window_partition_norm(tokens, cls, pos, ln, hp, wp, 4, 1e-6)
    assert LAUNCHES["window_partition_norm"] == before + 1
    xr, hr = reference.window_partition_norm(tokens, cls, pos, ln, hp, wp, 4, 1e-6)
    assert x.shape == (b * 6, 17, c)
    assert torch.equal(x, xr)  # one add of two values, rounded once either way
    _close(h, hr.float(), dtype)


def _tiny_4k(depth=2, tokenizer_depth=2, seed=0):
    arch = ArchSpec(64, depth, 4, (4, 2)[:depth], 128, tokenizer_depth=tokenizer_depth, name="tiny-4k-kernels")
    model = build_model(arch, seed=seed).eval()
    with torch.no_grad():  # non-trivial CLS / position parameters (zeros when built)
        g = torch.Generator().manual_seed(seed)
        for p in (model.backbone.tokenizer.w_cls, model.backbone.tokenizer.local_pos_embed):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


@pytest.mark.parametrize("tokenizer_depth", [1, 2])
def test_tokenizer_forward_matches_chunked_reference(tokenizer_depth):
    tok = _tiny_4k(tokenizer_depth=tokenizer_depth).backbone.tokenizer
    assert tok.fused  # chosen at construction
    tok.chunk_size = 2  # the reference's chunk loop with a ragged last chunk
    tokens = torch.randn(2, 8 * 12, 64)
    with torch.no_grad():
        ref = tok(tokens, 8, 12)
        before = LAUNCHES.copy()
        with switch.override(mode="triton"):
            out = tok(tokens, 8, 12)
    expected = {"window_partition_norm": 1, "window_attention": tokenizer_depth - 1, "window_attention_cls": 1}
    assert dict(LAUNCHES - before) == {k: n for k, n in expected.items() if n}
    assert out.shape == ref.shape == (2, 6, 64)
    _close(out, ref, torch.float32)


def test_backbone_4k_with_kernels_matches_reference():
    model = _tiny_4k()
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        ref = model.backbone(x, output="raw")
        before = LAUNCHES["window_attention_cls"]
        with switch.override(mode="triton"):
            out = model.backbone(x, output="raw")
    assert LAUNCHES["window_attention_cls"] == before + 1
    _close(out, ref, torch.float32)


def test_reference_path_on_cpu_by_default():
    q, k, v = _qkv(3, 17, 64, torch.float32)
    before = LAUNCHES.copy()
    with switch.override(mode="auto"):
        out = op.window_attention(q, k, v, 2)
    assert LAUNCHES == before
    assert torch.equal(out, reference.window_attention(q, k, v, 2))


def test_forced_triton_on_cpu_needs_interpreter():
    with switch.override(mode="triton", interpret=False), pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        op.window_attention(*_qkv(1, 17, 64, torch.float32), 2)


def test_export_traces_the_reference(interpret):
    tok = _tiny_4k().backbone.tokenizer

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = tok

        def forward(self, t):
            return self.tok(t, 8, 12)

    before = LAUNCHES.copy()
    graph = torch.export.export(Wrap(), (torch.randn(1, 96, 64),), strict=False).graph_module.code
    assert LAUNCHES == before
    assert "sapiens2_edge" not in graph and "scaled_dot_product_attention" in graph


def test_custom_ops_pass_opcheck(interpret):
    q, k, v = _qkv(3, 17, 64, torch.float32)
    torch.library.opcheck(op.window_attention_op, (q, k, v, 2))
    torch.library.opcheck(op.window_attention_cls_op, (q[:, 0].contiguous(), k, v, 2))
    tokens = torch.randn(1, 32, 8)
    args = (tokens, torch.randn(1, 1, 8), torch.randn(1, 17, 8), torch.ones(8), 4, 8, 4, 1e-6)
    torch.library.opcheck(op.window_partition_norm_op, args)


@pytest.mark.parametrize("call,message", [
    (lambda: op.launch_window_attention(torch.zeros(2, 17, 64, dtype=torch.int32), torch.zeros(2, 17, 64),
                                       torch.zeros(2, 17, 64), 2), "dtype torch.int32"),
    (lambda: op.launch_window_attention(torch.zeros(2, 17, 64), torch.zeros(2, 16, 64), torch.zeros(2, 17, 64), 2),
     "do not match"),
    (lambda: op.launch_window_attention(torch.zeros(2, 17, 64), torch.zeros(2, 17, 64), torch.zeros(2, 17, 64), 3),
     "do not split into 3 heads"),
    (lambda: op.launch_window_attention(torch.zeros(2, 17, 64), torch.zeros(2, 17, 64, dtype=torch.float16),
                                       torch.zeros(2, 17, 64), 2), "but q has"),
    (lambda: op.launch_window_attention(*(torch.zeros(1, 129, 8),) * 3, 1), "outside 1..128"),
    (lambda: op.launch_window_attention(torch.zeros(2, 64, 17).transpose(1, 2), torch.zeros(2, 17, 64),
                                       torch.zeros(2, 17, 64), 2), "unit stride"),
    (lambda: op.launch_window_attention_cls(torch.zeros(2, 17, 64), torch.zeros(2, 17, 64), torch.zeros(2, 17, 64),
                                           2), "2 dimensions"),
    (lambda: op.launch_window_partition_norm(torch.zeros(1, 30, 8), torch.zeros(8), torch.zeros(17, 8),
                                            torch.ones(8), 5, 6, 4, 1e-6), "4x4 windows"),
    (lambda: op.launch_window_partition_norm(torch.zeros(1, 32, 8), torch.zeros(8), torch.zeros(16, 8),
                                            torch.ones(8), 4, 8, 4, 1e-6), "17-token windows"),
])
def test_bad_inputs_raise_typed_errors(call, message):
    with pytest.raises(InvalidTensorError, match=message):
        call()
