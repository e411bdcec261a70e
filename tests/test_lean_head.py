"""The pose / seg head's lean eager path (:mod:`sapiens2_edge.models.lean_head`): in CPU inference it
computes what the head's layers compute one by one (the reference: the same modules run with autograd
on, which takes the plain path), its transposed convolutions run by groups of output channels no larger
than the bound, the input is never written, hooks see their layers as usual, and traced, float16 autocast
or autograd forwards keep the plain layers; under bf16 autocast the same path runs on bf16 maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sapiens2_edge.models.lean_head as lean_head
from sapiens2_edge.quantization import quantize
from tests.fixtures.tiny import INPUT, tiny_model

FEATURES = (2, 64, 8, 6)  # the tiny backbone's feature map of a batch of two


def _features(seed=0):
    return torch.randn(*FEATURES, generator=torch.Generator().manual_seed(seed))


def _one_by_one(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The head's layers in turn with autograd on: torch's own layers, no lean path."""
    with torch.enable_grad():
        for m in (*head.deconv_layers, *head.conv_layers, getattr(head, head.final_name)):
            x = m(x)
    return x.detach()


class DeconvCalls:
    """Output bytes of every conv_transpose2d call."""

    def __init__(self, monkeypatch):
        self.out_bytes: list[int] = []
        real = F.conv_transpose2d

        def spy(*args, **kw):
            y = real(*args, **kw)
            self.out_bytes.append(y.numel() * y.element_size())
            return y

        monkeypatch.setattr(torch.nn.functional, "conv_transpose2d", spy)


def _last_deconv_channel_bytes(head) -> int:
    """Bytes of one output channel of the head's last transposed convolution for :data:`FEATURES`."""
    n, _, h, w = FEATURES
    return n * (h << len(head.deconv_layers) // 3) * (w << len(head.deconv_layers) // 3) * 4


@pytest.mark.parametrize("task", ["seg", "pose"])
def test_lean_path_is_the_layers_one_by_one_with_grouped_transposed_convolutions(task, monkeypatch):
    head = tiny_model(task).decode_head.eval()
    x = _features()
    ref = _one_by_one(head, x)
    bound = 3 * _last_deconv_channel_bytes(head)  # groups of 3 channels in the last transposed convolution
    monkeypatch.setattr(lean_head, "GROUP_BYTES", bound)
    calls = DeconvCalls(monkeypatch)
    before = x.clone()
    with torch.no_grad():
        out = head(x)
    assert torch.equal(x, before)  # norms and SiLU write into what the layers made, never into the input
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    deconvs = len(head.deconv_layers) // 3
    assert len(calls.out_bytes) > deconvs  # some layer ran as several calls
    assert max(calls.out_bytes) <= bound


def test_int8_head_runs_grouped_too(monkeypatch):
    model = tiny_model("seg")
    data = [torch.randn(2, 3, *INPUT, generator=torch.Generator().manual_seed(1))]
    q, _ = quantize(model, "int8", calibration=data, input_size=INPUT, activation_mode="static", head="int8",
                    report_samples=0, progress=False)
    x = _features(3)
    ref = _one_by_one(q.decode_head, x)
    bound = 3 * _last_deconv_channel_bytes(model.decode_head)
    monkeypatch.setattr(lean_head, "GROUP_BYTES", bound)
    calls = DeconvCalls(monkeypatch)
    with torch.no_grad():
        out = q.decode_head(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert len(calls.out_bytes) > 4 and max(calls.out_bytes) <= bound


def test_hooked_layers_are_called_as_modules():
    head = tiny_model("seg").decode_head.eval()
    x = _features(1)
    seen = []
    norm, silu, conv = head.deconv_layers[1], head.deconv_layers[2], head.conv_layers[0]
    handles = [m.register_forward_hook(lambda m, a, out, _k=k: seen.append((_k, out.clone())))
               for k, m in (("norm", norm), ("silu", silu), ("conv", conv))]
    try:
        with torch.no_grad():
            out = head(x)
    finally:
        for h in handles:
            h.remove()
    assert [k for k, _ in seen] == ["norm", "silu", "conv"]
    last = head.deconv_layers[9]
    last.forward = lambda y: seen.append(("own forward", None)) or F.conv_transpose2d(y, last.weight, None, 2, 1)
    with torch.no_grad():
        again = head(x)
    del last.forward
    assert seen[-1][0] == "own forward"  # a forward set on the instance is what runs
    torch.testing.assert_close(again, out, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        first = F.instance_norm(head.deconv_layers[0](x), eps=1e-5)
    torch.testing.assert_close(seen[0][1], first, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(seen[1][1], F.silu(first), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, _one_by_one(head, x), rtol=1e-5, atol=1e-5)


def test_traced_autocast_and_autograd_forwards_take_the_plain_layers(monkeypatch):
    head = tiny_model("seg").decode_head.eval()
    x = _features(2)
    monkeypatch.setattr(lean_head, "GROUP_BYTES", 1)  # the lean path would split every transposed convolution
    calls = DeconvCalls(monkeypatch)
    with torch.no_grad():
        graph = torch.jit.trace(head, x).inlined_graph
    kinds = [n.kind() for n in graph.nodes()]
    assert kinds.count("aten::_convolution") == 4 + 2 + 1  # one node per layer: 4 transposed, 2 + 1 1x1 convs
    assert "aten::instance_norm" in kinds and "aten::var_mean" not in kinds and "aten::addmm" not in kinds
    calls.out_bytes.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):  # autocast in another dtype than bf16
        y = head(x)
    assert len(calls.out_bytes) == 4 and y.dtype == torch.float16
    calls.out_bytes.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autograd on
        head(x)
    assert len(calls.out_bytes) == 4
    calls.out_bytes.clear()
    head(x)
    assert len(calls.out_bytes) == 4


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("task", ["seg", "pose"])
def test_bf16_autocast_runs_the_lean_path_on_bf16_maps(task, monkeypatch):
    """What bf16 autocast computes layer by layer (bf16 maps, bf16-rounded weights), by groups of output
    channels, the input untouched; float32 or bf16-stored weights alike."""
    head = tiny_model(task).decode_head.eval()
    x = _features(5)
    with torch.no_grad():
        full = head(x)
        with torch.autocast("cpu", dtype=torch.bfloat16), lean_head.layer_by_layer():
            ref = head(x)
    bound = 3 * _last_deconv_channel_bytes(head) // 2  # 3 bf16 channels of the last transposed convolution
    monkeypatch.setattr(lean_head, "GROUP_BYTES", bound)
    calls = DeconvCalls(monkeypatch)
    before = x.clone()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x)
    assert out.dtype == torch.bfloat16 and torch.equal(x, before)
    assert len(calls.out_bytes) > 4 and max(calls.out_bytes) <= bound
    assert _rel_l2(out, ref) <= 4e-3  # bf16 rounding of sums taken in another order
    assert _rel_l2(out, full) <= 1.1 * _rel_l2(ref, full)  # no less faithful to float32 than autocast's layers
    for m in head.modules():  # the torch backend's bf16 models keep their convolution weights in bf16
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.to(torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(head(x), out)


def test_bf16_autocast_with_a_hooked_or_int8_layer_takes_autocast_s_layers(monkeypatch):
    head = tiny_model("seg").decode_head.eval()
    x = _features(6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), lean_head.layer_by_layer():
        ref = head(x)
    monkeypatch.setattr(lean_head, "GROUP_BYTES", 1)
    calls = DeconvCalls(monkeypatch)
    seen = []
    handle = head.deconv_layers[1].register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = head(x)
    finally:
        handle.remove()
    assert seen == [torch.bfloat16] and len(calls.out_bytes) == 4 and torch.equal(out, ref)
    model = tiny_model("seg")
    data = [torch.randn(2, 3, *INPUT, generator=torch.Generator().manual_seed(1))]
    q, _ = quantize(model, "int8", calibration=data, input_size=INPUT, activation_mode="static", head="int8",
                    report_samples=0, progress=False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = q.decode_head(x)
        with lean_head.layer_by_layer():
            assert torch.equal(got, q.decode_head(x))


def test_eager_cpu_inference_is_false_under_grad_autocast_and_layer_by_layer():
    x = torch.zeros(1)
    with torch.no_grad():
        assert lean_head.eager_cpu_inference(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not lean_head.eager_cpu_inference(x)
    with torch.enable_grad():
        assert not lean_head.eager_cpu_inference(x)
    with torch.inference_mode():
        assert lean_head.eager_cpu_inference(x)
        with lean_head.layer_by_layer():
            assert not lean_head.eager_cpu_inference(x)
        assert lean_head.eager_cpu_inference(x)


def test_a_norm_subclass_with_its_own_forward_is_called_and_half_precision_takes_the_layers(monkeypatch):
    from sapiens2_edge.models.heads import InstanceNorm

    calls = []

    class Float32Norm(InstanceNorm):  # as an exporter's float32 norm in a float16 program
        def forward(self, x):
            calls.append(x.dtype)
            return super().forward(x.float()).to(x.dtype)

    head = tiny_model("seg").decode_head.eval()
    for i in (1, 4, 7, 10):
        head.deconv_layers[i] = Float32Norm()
    x = _features(4)
    with torch.no_grad():
        out = head(x)
    assert len(calls) == 4
    torch.testing.assert_close(out, _one_by_one(head, x), rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(lean_head, "GROUP_BYTES", 1)
    deconvs = DeconvCalls(monkeypatch)
    with torch.no_grad():
        head.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert len(deconvs.out_bytes) == 4  # not grouped: low-precision heads run their layers as they are
