"""The kernels' pure-torch references are self-contained (they import nothing above the kernels
package) and compute exactly what the model's own modules compute."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import sapiens2_edge
from sapiens2_edge.kernels import switch
from sapiens2_edge.kernels.attention_prologue import reference as prologue_ref
from sapiens2_edge.kernels.scaled_gemm import reference as gemm_ref
from sapiens2_edge.kernels.token_quant.reference import quant_rows_reference
from sapiens2_edge.kernels.window_attention import reference as window_ref
from sapiens2_edge.models.arch import NUM_PREFIX_TOKENS, ArchSpec
from sapiens2_edge.models.backbone import Attention, RopeEmbedding, WindowTokenizer, apply_rope
from sapiens2_edge.quantization.config import layer_config
from sapiens2_edge.quantization.linear import QuantLinear

KERNELS = Path(sapiens2_edge.__file__).parent / "kernels"
ALLOWED = {"errors", "spec", "cpu_features", "kernels"}  # the bottom layer (tests/test_layers.py) and itself


def _imports(path: Path) -> set[str]:
    """First component under sapiens2_edge of every import in ``path`` (relative ones resolved)."""
    package = ["sapiens2_edge", *path.relative_to(KERNELS.parent).with_suffix("").parts][:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            names = [name] if node.module or not node.level else [f"{name}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("sapiens2_edge.")}
    return found


def test_kernels_import_only_the_bottom_layer_and_kernels():
    files = sorted(KERNELS.rglob("*.py"))
    assert any(f.name == "reference.py" for f in files)
    for f in files:
        assert _imports(f) <= ALLOWED, (f, _imports(f))


def test_import_walk_sees_relative_imports():
    assert _imports(KERNELS / "scaled_gemm" / "reference.py") == {"kernels"}
    assert _imports(KERNELS / "attention_prologue" / "op.py") == {"errors", "kernels"}


HP, WP = 3, 4
T = NUM_PREFIX_TOKENS + HP * WP


@pytest.mark.parametrize("mode", ["bf16", "fp32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads,kv", [(4, 2), (2, 2)])
def test_prologue_reference_is_the_attention_modules_steps(mode, dtype, heads, kv):
    """QK-norm modules, apply_rope and the kv repeat of the backbone's Attention, bit for bit."""
    torch.manual_seed(0)
    d = 16
    with switch.override(mode="reference"):
        attn = Attention(heads * d, heads, kv).to(dtype)
    with torch.no_grad():
        attn.q_norm.weight.normal_(1, 0.2)
        attn.k_norm.weight.normal_(1, 0.2)
    x = torch.randn(2, T, heads * d).to(dtype)
    sin, cos = RopeEmbedding(d, mode=mode)(HP, WP)
    round_bf16 = mode == "bf16"
    with torch.no_grad():
        q, k, v = attn.wq(x), attn.wk(x), attn.wv(x)
        split = lambda t, n: t.view(2, T, n, d).transpose(1, 2)  # noqa: E731
        mq, mk = attn.q_norm(split(q, heads)), attn.k_norm(split(k, kv))
        mq, mk = apply_rope(mq, sin, cos, round_bf16), apply_rope(mk, sin, cos, round_bf16)
        g = heads // kv
        model = (mq, mk.repeat_interleave(g, dim=1), split(v, kv).repeat_interleave(g, dim=1))
        ref = prologue_ref.attention_prologue(q, k, v, attn.q_norm.weight, attn.k_norm.weight, sin, cos, heads, kv,
                                              attn.q_norm.eps, round_bf16, True)
    for r, m in zip(ref, model, strict=True):
        assert r.dtype == m.dtype and torch.equal(r, m)


@pytest.mark.parametrize("round_bf16", [True, False])
def test_rotation_is_apply_rope(round_bf16):
    x = torch.randn(2, 3, T, 76)
    sin, cos = RopeEmbedding(76, mode="bf16" if round_bf16 else "fp32")(HP, WP)
    assert torch.equal(prologue_ref.rotate(x, sin, cos, round_bf16), apply_rope(x, sin, cos, round_bf16))


def test_window_references_are_the_tokenizer_modules():
    torch.manual_seed(1)
    with switch.override(mode="reference"):
        tok = WindowTokenizer(ArchSpec(32, 1, 2, (2,), 64, tokenizer_depth=1, name="tiny-4k-ref"))
    with torch.no_grad():
        tok.w_cls.normal_()
        tok.local_pos_embed.normal_()
        blk = tok.blocks[0]
        blk.ln1.weight.normal_(1, 0.2)
        tokens = torch.randn(2, 8 * 12, 32)
        x, h = window_ref.window_partition_norm(tokens, tok.w_cls, tok.local_pos_embed, blk.ln1.weight, 8, 12, 4,
                                                blk.ln1.eps)
        assert torch.equal(x, tok.partition(tokens, 8, 12)) and torch.equal(h, blk.ln1(x))
        attn = blk.attn
        fused = attn.project(window_ref.window_attention(attn.wq(h), attn.wk(h), attn.wv(h), attn.heads))
        torch.testing.assert_close(fused, attn(h), rtol=1e-6, atol=1e-6)
        cls = window_ref.window_attention_cls(attn.wq(h[:, 0]), attn.wk(h), attn.wv(h), attn.heads)
        torch.testing.assert_close(attn.project(cls), attn(h)[:, 0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
@pytest.mark.parametrize("act_mode", ["dynamic", "static"])
def test_quant_references_are_quantlinears_reference_path(scheme, act_mode):
    g = torch.Generator().manual_seed(2)
    lin = torch.nn.Linear(48, 40)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(40, 48, generator=g) * 0.2)
    layer = QuantLinear.from_float(lin, layer_config(scheme, activation_mode=act_mode), prefix_tokens=9,
                                   input_scale=torch.tensor([0.015]))
    layer.kernel = "reference"
    x = torch.randn(2, 13, 48, generator=g)
    x[:, :9] *= 8.0
    q, s = quant_rows_reference(x, scheme, layer.input_scale, layer.prefix_tokens)
    gemm = gemm_ref.int8_gemm_reference if scheme == "int8" else gemm_ref.fp8_gemm_reference
    with torch.no_grad():
        expected = layer(x)
    y = gemm(q, layer.weight, s, layer.weight_scale, layer.bias, torch.float32).reshape(expected.shape)
    assert torch.equal(y, expected)


def test_int8_accumulation_reference_is_exact():
    a = torch.full((3, 64), -127, dtype=torch.int8)
    w = torch.full((5, 64), 127, dtype=torch.int8)
    acc = gemm_ref.int8_accumulate_reference(a, w)
    assert acc.dtype == torch.int32 and int(acc[0, 0]) == -64 * 127 * 127
    assert torch.equal(gemm_ref.dequant_epilogue(acc, torch.ones(3, 1), torch.ones(5), None, torch.float32),
                       acc.float())
