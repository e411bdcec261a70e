"""The SwiGLU's gate/up projection as two GEMMs in graphs made for OpenVINO: same arithmetic as the
fused projection followed by the split, for every export form of ``w12``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sapiens2_edge.exporters.gate_split import SplitSwiGLU, split_gate_projections
from sapiens2_edge.exporters.onnx_quant import export_modules
from sapiens2_edge.models.backbone import SwiGLU
from sapiens2_edge.quantization.config import layer_config
from sapiens2_edge.quantization.linear import QuantLinear

PREFIX = 3


class Block(nn.Module):
    def __init__(self, ffn: SwiGLU):
        super().__init__()
        self.ffn = ffn

    def forward(self, x):
        return self.ffn(x)


def swiglu(seed: int = 0) -> SwiGLU:
    torch.manual_seed(seed)
    ffn = SwiGLU(64, 96)
    with torch.no_grad():
        for p in ffn.parameters():
            p.copy_(torch.randn(p.shape) * 0.1)
    return ffn


def tokens(seed: int = 1) -> torch.Tensor:
    x = torch.randn(2, PREFIX + 30, 64, generator=torch.Generator().manual_seed(seed))
    x[:, :PREFIX] *= 20  # prefix outliers: they keep their own per-token scale
    return x


CASES = [("int8", "static"), ("int8", "dynamic"), ("int8-weight", "dynamic"), ("int4-weight", "dynamic"),
         ("fp16", "dynamic")]


@pytest.mark.parametrize("scheme,mode", CASES)
def test_split_form_computes_what_the_fused_export_form_does(scheme, mode):
    ffn = swiglu()
    cfg = layer_config(scheme, activation_mode=mode)
    ffn.w12 = QuantLinear.from_float(ffn.w12, cfg, PREFIX, torch.tensor([0.05]))
    model = Block(ffn).eval()
    x = tokens()
    with torch.no_grad(), export_modules(model):
        fused = model(x)
        with split_gate_projections(model) as n:
            assert n == 1 and isinstance(model.ffn, SplitSwiGLU)
            split = model(x)
        assert model.ffn is ffn  # restored
    assert fused.abs().max() > 0
    torch.testing.assert_close(split, fused, rtol=1e-5, atol=1e-6)


def test_float_halves_are_views_of_the_fused_weight():
    ffn = swiglu()
    model = Block(ffn).eval()
    x = tokens()
    with torch.no_grad():
        fused = model(x)
        with split_gate_projections(model) as n:
            assert n == 1
            gate, up = model.ffn.gate, model.ffn.up
            assert gate.weight.shape == up.weight.shape == (96, 64)
            base = ffn.w12.weight.data_ptr()
            assert gate.weight.data_ptr() == base  # no copy of the weights
            assert up.weight.data_ptr() == base + 96 * 64 * ffn.w12.weight.element_size()
            torch.testing.assert_close(model(x), fused, rtol=1e-6, atol=1e-6)
    assert model.ffn is ffn


def test_a_form_it_does_not_know_is_left_fused():
    class Odd(nn.Module):
        def __init__(self, lin):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(x)

    ffn = swiglu()
    ffn.w12 = Odd(ffn.w12)
    model = Block(ffn)
    with split_gate_projections(model) as n:
        assert n == 0 and model.ffn is ffn
