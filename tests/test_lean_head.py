"""The heads' lean eager path (:mod:`sapiens2_edge.models.lean_head`): in CPU inference it computes what
the head's layers compute one by one (the reference: the same modules run with autograd on, which takes
the plain path), its transposed convolutions run by groups of output channels and the dense heads'
convolutions by bands of rows (PixelShuffle applied band by band) no larger than the bound, the input is
never written, hooks see their layers as usual, and traced, float16 autocast or autograd forwards keep the
plain layers; under bf16 autocast the same path runs on bf16 maps."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sapiens2_edge.models.lean_head as lean_head
from sapiens2_edge.quantization import quantize
from tests.fixtures.tiny import INPUT, input_size, tiny_model

FEATURES = (2, 64, 8, 6)  # the tiny backbone's feature map of a batch of two


def _features(seed=0):
    return torch.randn(*FEATURES, generator=torch.Generator().manual_seed(seed))


def _layers(head: nn.Module) -> list[nn.Module]:
    """A head's layers in the order its forward runs them (pose / seg, or a dense head's)."""
    if hasattr(head, "deconv_layers"):
        return [*head.deconv_layers, *head.conv_layers, getattr(head, head.final_name)]
    return [*head.input_conv, *(m for b in head.upsample_blocks for m in b), *head.conv_layers,
            getattr(head, head.final_name)]


def _one_by_one(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The head's layers in turn with autograd on: torch's own layers, no lean path."""
    with torch.enable_grad():
        for m in _layers(head):
            x = m(x)
    return x.detach()


class Calls:
    """Output shapes and bytes of every call of ``torch.nn.functional.<name>``."""

    def __init__(self, monkeypatch, name: str):
        self.shapes: list[tuple[int, ...]] = []
        self.out_bytes: list[int] = []
        real = getattr(F, name)

        def spy(*args, **kw):
            y = real(*args, **kw)
            self.shapes.append(tuple(y.shape))
            self.out_bytes.append(y.numel() * y.element_size())
            return y

        monkeypatch.setattr(torch.nn.functional, name, spy)

    def max_bytes(self, itemsize: int = 4) -> int:
        return max(itemsize * torch.Size(s).numel() for s in self.shapes)


def deconv_calls(monkeypatch) -> Calls:
    return Calls(monkeypatch, "conv_transpose2d")


def conv_calls(monkeypatch) -> Calls:
    return Calls(monkeypatch, "conv2d")


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
    calls = deconv_calls(monkeypatch)
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
    float_ref = _one_by_one(model.decode_head.eval(), x)
    bound = 3 * _last_deconv_channel_bytes(model.decode_head)
    monkeypatch.setattr(lean_head, "GROUP_BYTES", bound)
    calls = deconv_calls(monkeypatch)
    with torch.no_grad():
        out = q.decode_head(x)
    assert len(calls.out_bytes) > 4 and max(calls.out_bytes) <= bound
    # the int8 layers round what the norms wrote, and the in-place norm's sums run in another order than
    # torch's kernel: a few roundings flip (3e-4 here), far below int8's own error against the float head
    # (5e-2), and the output is as faithful to the float head as the layers'
    assert _rel_l2(out, ref) <= 0.02 * _rel_l2(ref, float_ref)
    assert _rel_l2(out, float_ref) <= 1.01 * _rel_l2(ref, float_ref)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.999


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


@pytest.mark.parametrize("task", ["seg", "normal"])
def test_hooks_on_a_container_or_on_every_module_fire_as_in_the_plain_forward(task, monkeypatch):
    head = tiny_model(task).decode_head.eval()
    x = _features(2)
    ref = _one_by_one(head, x)
    container = head.conv_layers if task == "seg" else head.upsample_blocks[-1]
    seen = []
    handle = container.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    monkeypatch.setattr(lean_head, "BAND_BYTES", 1)  # the lean path would run each 3x3 row by row
    calls = conv_calls(monkeypatch)
    try:
        with torch.no_grad():
            out = head(x)
    finally:
        handle.remove()
    conv_calls_made = list(calls.shapes)
    assert len(seen) == 1  # the container was called, so the lean path did not run
    if task == "seg":  # conv_layers' output is what the final 1x1 convolution reads
        torch.testing.assert_close(getattr(head, head.final_name)(seen[0]), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # one convolution call per Conv2d: no bands, no 1x1 convolution as a GEMM
    assert len(conv_calls_made) == sum(type(m) is nn.Conv2d for m in _layers(head)), conv_calls_made
    names = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, out: names.append(type(m).__name__))
    try:
        with torch.no_grad():
            again = head(x)
    finally:
        handle.remove()
    layers = [type(m).__name__ for m in _layers(head)]
    assert [n for n in names if n in set(layers)] == layers  # every layer was called, in order
    torch.testing.assert_close(again, ref, rtol=1e-5, atol=1e-5)


def test_traced_autocast_and_autograd_forwards_take_the_plain_layers(monkeypatch):
    head = tiny_model("seg").decode_head.eval()
    x = _features(2)
    monkeypatch.setattr(lean_head, "GROUP_BYTES", 1)  # the lean path would split every transposed convolution
    calls = deconv_calls(monkeypatch)
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
    a, b = a.double(), b.double()
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
    calls = deconv_calls(monkeypatch)
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
    calls = deconv_calls(monkeypatch)
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
    deconvs = deconv_calls(monkeypatch)
    with torch.no_grad():
        head.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert len(deconvs.out_bytes) == 4  # not grouped: low-precision heads run their layers as they are


# --- the dense heads (normal / albedo / pointmap): convolutions by bands of rows -------------------

def _dense_features(task: str, seed: int = 0) -> torch.Tensor:
    h, w = input_size(task)
    return torch.randn(2, 64, h // 16, w // 16, generator=torch.Generator().manual_seed(seed))


def _dense_map(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("task", ["normal", "albedo", "pointmap"])
def test_dense_head_runs_its_convolutions_by_bands_of_rows(task, monkeypatch):
    head = tiny_model(task).decode_head.eval()
    x = _dense_features(task)
    ref = _one_by_one(head, x)
    truth = _one_by_one(copy.deepcopy(head).double(), x.double())  # the same layers in float64
    n, _, h, w = x.shape
    last = head.upsample_blocks[-1][0]  # its unshuffled output: out_channels at the map's size before the shuffle
    unshuffled = n * last.out_channels * (h << len(head.upsample_blocks) - 1) * (w << len(head.upsample_blocks) - 1) * 4
    bound = unshuffled // 5
    monkeypatch.setattr(lean_head, "BAND_BYTES", bound)
    calls = conv_calls(monkeypatch)
    before = x.clone()
    with torch.no_grad():
        out = head(x)
    assert torch.equal(x, before)
    assert _rel_l2(_dense_map(out), ref) <= 1e-5  # float32 rounding (sums and the RMS taken in another order)
    assert _rel_l2(_dense_map(out), truth) <= 1.1 * _rel_l2(ref, truth)  # no less exact than the layers
    convs = sum(type(m) is nn.Conv2d for m in _layers(head))
    assert len(calls.shapes) >= convs + 4  # the later layers ran as several calls each
    assert calls.max_bytes() <= bound  # the unshuffled map (5x the bound) was never made whole
    if task == "pointmap":  # the scale branch is the plain layers'
        with torch.enable_grad():
            scale = head.scale_final_layer(head.scale_conv_layers(x)).detach()
        torch.testing.assert_close(out[1], scale, rtol=1e-6, atol=1e-6)


def test_convolution_by_rows_reads_the_rows_either_side_and_zeros_past_the_edges(monkeypatch):
    """One-row and uneven bands of a 5x5 convolution equal the whole convolution (a hand-built case of
    every band position: first, inner, last, and a last band shorter than the rest)."""
    gen = torch.Generator().manual_seed(7)
    conv = nn.Conv2d(3, 8, 5, padding=2)
    x = torch.randn(2, 3, 11, 6, generator=gen)
    with torch.no_grad():
        ref = conv(x)
        conv12 = nn.Conv2d(3, 12, 3, padding=1)
        shuffled = F.pixel_shuffle(conv12(x), 2)
        calls = conv_calls(monkeypatch)
        for rows in (1, 2, 4, 11):
            monkeypatch.setattr(lean_head, "BAND_BYTES", (rows + 4) * 2 * 8 * 6 * 4)  # bands of `rows`, read with 4 more
            calls.shapes.clear()
            torch.testing.assert_close(lean_head.conv2d_by_rows(x, conv), ref, rtol=1e-5, atol=1e-5)
            assert [s[2] for s in calls.shapes] == [min(rows, 11 - r) for r in range(0, 11, rows)]
        monkeypatch.setattr(lean_head, "BAND_BYTES", (3 + 2) * 2 * 12 * 6 * 4)
        calls.shapes.clear()
        torch.testing.assert_close(lean_head.conv2d_by_rows(x, conv12, shuffle=2), shuffled, rtol=1e-5, atol=1e-5)
        assert [s[2] for s in calls.shapes] == [3, 3, 3, 2]


def test_a_hooked_pixel_shuffle_sees_the_whole_map(monkeypatch):
    head = tiny_model("normal").decode_head.eval()
    x = _dense_features("normal", 1)
    seen = []
    shuffle = head.upsample_blocks[-1][1]
    handle = shuffle.register_forward_hook(lambda m, a, out: seen.append((tuple(a[0].shape), tuple(out.shape))))
    monkeypatch.setattr(lean_head, "BAND_BYTES", 1)
    try:
        with torch.no_grad():
            out = head(x)
    finally:
        handle.remove()
    (before, after), = seen
    assert before[1] == 4 * after[1] and after[2:] == (2 * before[2], 2 * before[3])
    torch.testing.assert_close(out, _one_by_one(head, x), rtol=1e-5, atol=1e-5)


def test_rms_norm_in_place_is_the_formula():
    from sapiens2_edge.models.heads import RMSNorm2d

    gen = torch.Generator().manual_seed(3)
    norm = RMSNorm2d(5)
    with torch.no_grad():
        norm.norm.weight.copy_(torch.randn(5, generator=gen))
    x = torch.randn(2, 5, 4, 3, generator=gen)
    expected = x / torch.sqrt((x * x).mean(dim=1, keepdim=True) + 1e-6) * norm.norm.weight.view(1, 5, 1, 1)
    y = x.clone()
    assert norm.forward_(y) is y
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(norm(x), expected, rtol=1e-6, atol=1e-6)
    half = x.to(torch.bfloat16)
    assert torch.equal(norm.forward_(half), norm(half)) and torch.equal(half, x.to(torch.bfloat16))


@pytest.mark.parametrize("task", ["normal", "albedo"])
def test_dense_head_under_bf16_autocast_runs_by_rows_on_bf16_maps(task, monkeypatch):
    head = tiny_model(task).decode_head.eval()
    x = _dense_features(task, 2)
    with torch.no_grad():
        full = head(x)
        with torch.autocast("cpu", dtype=torch.bfloat16), lean_head.layer_by_layer():
            ref = head(x)
    monkeypatch.setattr(lean_head, "BAND_BYTES", 2 * 16 * 64 * 48 * 2)  # 2 rows' bytes of the last unit's bf16 output
    calls = conv_calls(monkeypatch)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x)
    assert out.dtype == ref.dtype and calls.max_bytes(2) <= 2 * 16 * 64 * 48 * 2
    assert len(calls.shapes) >= sum(type(m) is nn.Conv2d for m in _layers(head)) + 4
    assert _rel_l2(out, ref) <= 4e-3
    assert _rel_l2(out, full) <= 1.1 * _rel_l2(ref, full)


def test_instance_norm_in_place_holds_on_a_map_far_from_zero():
    """The in-place InstanceNorm centres the map before it measures its spread: on values of 1000 +/- 0.01
    it is as exact as torch's kernel against float64 (a mean of squares minus the squared mean would
    lose every digit there)."""
    gen = torch.Generator().manual_seed(11)
    x = 1000 + 0.01 * torch.randn(2, 3, 40, 30, generator=gen)
    truth = F.instance_norm(x.double(), eps=1e-5)
    torch_err = _rel_l2(F.instance_norm(x, eps=1e-5), truth)
    y = x.clone()
    assert lean_head.instance_norm_(y, 1e-5) is y
    assert _rel_l2(y, truth) <= max(2 * torch_err, 1e-6)
