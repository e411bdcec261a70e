"""GPU checks of the attention kernels at real Sapiens2 shapes (skipped without CUDA).

FlashAttention's rule: the error of our low-precision output against an fp32 reference is at
most twice that of the PyTorch path run in the same low precision."""

from __future__ import annotations

import pytest
import torch

from sapiens2_edge.kernels import switch
from sapiens2_edge.kernels.attention_prologue import op as prologue
from sapiens2_edge.kernels.attention_prologue import reference as prologue_ref
from sapiens2_edge.kernels.window_attention import op as window
from sapiens2_edge.kernels.window_attention import reference as window_ref
from sapiens2_edge.models.arch import ArchSpec
from sapiens2_edge.models.backbone import RopeEmbedding
from sapiens2_edge.models.model import build_model

LAUNCHES = prologue.LAUNCHES  # one counter for every kernel

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

LOW = [torch.bfloat16, torch.float16]
# (C, heads): 1b (d=64), 0.8b (d=80), 5b (d=76)
WIDTHS = [(1536, 24), (1280, 16), (2432, 32)]


def _err(x, ref):
    return (x.float() - ref.float()).abs().max().item()


def _fa_rule(ours, torch_low, ref32):
    e_ours, e_torch = _err(ours, ref32), _err(torch_low, ref32)
    assert e_ours <= 2 * e_torch + 1e-6, (e_ours, e_torch)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("c,heads", WIDTHS)
def test_window_attention_real_shapes(dtype, c, heads):
    n = 3072 + 1  # one 4096x3072 image, plus one window so the count is odd
    q, k, v = torch.randn(n, 17, 3 * c, device="cuda").to(dtype).split(c, dim=-1)
    ref32 = window_ref.window_attention(q.float(), k.float(), v.float(), heads)
    before = LAUNCHES["window_attention"]
    out = window.launch_window_attention(q, k, v, heads)
    assert LAUNCHES["window_attention"] == before + 1
    _fa_rule(out, window_ref.window_attention(q, k, v, heads), ref32)
    _fa_rule(window.launch_window_attention_cls(q[:, 0], k, v, heads), window_ref.window_attention_cls(q[:, 0], k, v, heads),
             ref32[:, 0])


@pytest.mark.parametrize("dtype", LOW)
def test_partition_norm_real_shape(dtype):
    c, hp, wp = 1536, 256, 192
    tokens = torch.randn(1, c, hp * wp, device="cuda").to(dtype).transpose(1, 2)
    cls, pos, ln = (torch.randn(*s, device="cuda").to(dtype) for s in ((1, 1, c), (1, 17, c), (c,)))
    x, h = window.launch_window_partition_norm(tokens, cls, pos, ln, hp, wp, 4, 1e-6)
    xr, hr = window_ref.window_partition_norm(tokens, cls, pos, ln, hp, wp, 4, 1e-6)
    assert torch.equal(x, xr)
    _, h32 = window_ref.window_partition_norm(tokens.float(), cls.float(), pos.float(), ln.float(), hp, wp, 4, 1e-6)
    _fa_rule(h, hr, h32)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("c,heads,kv", [(1536, 24, 12), (1280, 16, 8), (2432, 32, 16), (1024, 16, 16)])
@pytest.mark.parametrize("round_bf16", [True, False])
def test_prologue_real_shapes(dtype, c, heads, kv, round_bf16):
    d, hp, wp = c // heads, 64, 48
    t = 9 + hp * wp
    sin, cos = (x.cuda() for x in RopeEmbedding(d, mode="bf16" if round_bf16 else "fp32")(hp, wp))
    q, k, v = torch.randn(2, t, (heads + 2 * kv) * d, device="cuda").to(dtype).split([c, kv * d, kv * d], -1)
    qw, kw = (1 + 0.1 * torch.randn(d, device="cuda")).to(dtype), (1 + 0.1 * torch.randn(d, device="cuda")).to(dtype)
    tail = (sin, cos, heads, kv, 1e-6, round_bf16, True)
    before = LAUNCHES["attention_prologue"]
    ours = prologue.launch(q, k, v, qw, kw, *tail)
    assert LAUNCHES["attention_prologue"] == before + 1
    low = prologue_ref.attention_prologue(q, k, v, qw, kw, *tail)
    ref32 = prologue_ref.attention_prologue(q.float(), k.float(), v.float(), qw.float(), kw.float(), *tail)
    for o, lo, r in zip(ours, low, ref32, strict=True):
        _fa_rule(o, lo, r)


def _tiny_4k():
    arch = ArchSpec(256, 2, 4, (4, 2), 512, tokenizer_depth=2, name="gpu-4k")
    return build_model(arch).cuda().eval()


@pytest.mark.parametrize("dtype", LOW)
def test_backbone_with_kernels_follows_fa_rule(dtype):
    with switch.override(mode="auto"):
        model = _tiny_4k()
    assert model.backbone.tokenizer.fused and model.backbone.blocks[0].attn.fused  # chosen at construction
    x = torch.randn(2, 3, 512, 384, device="cuda")
    with torch.inference_mode():
        with switch.override(mode="reference"):
            ref32 = model(x)
            low_model = model.to(dtype)
            low = low_model(x)
        before = LAUNCHES["window_attention_cls"], LAUNCHES["attention_prologue"]
        with switch.override(mode="auto"):  # CUDA: the Triton path
            ours = low_model(x)
    assert LAUNCHES["window_attention_cls"] > before[0] and LAUNCHES["attention_prologue"] > before[1]
    _fa_rule(ours, low, ref32)


def test_torch_compile_sees_the_custom_ops():
    with switch.override(mode="triton"):
        model = _tiny_4k().to(torch.bfloat16)
    x = torch.randn(1, 3, 256, 192, device="cuda")
    torch._dynamo.reset()
    with torch.inference_mode(), switch.override(mode="triton"):
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(compiled.float(), eager.float(), rtol=3e-2, atol=3e-2)
