"""int8 head on the dense heads (normal, pointmap, albedo; recipe ``head="int8"``): every upsampling 3x3
convolution (``input_conv``, the PixelShuffle units') reads int8 inputs on its calibrated grid and int8
weights per output channel, the full-resolution 3x3 convolutions and the 1x1 ones (the final one, the
pointmap's scale branch) stay float, the scales are what calibration saw, the checkpoint
round-trips them and every format that carries an int8 head computes them (OpenVINO with its int8
convolution kernels where the CPU multiplies int8 natively)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sapiens2_edge as s2e
from sapiens2_edge.errors import CalibrationError, ConfigError, StateDictMismatchError
from sapiens2_edge.models.checkpoint import read_header, read_tensors, write_tensors
from sapiens2_edge.quantization import load_quantized, quantize, save_quantized
from sapiens2_edge.quantization.head_int8 import QuantConv, quantized_convs, quantized_deconvs, quantized_head_layers
from tests.fixtures.coarse_grids import assert_artifact_applies_grids
from tests.fixtures.tiny import HEADS, input_size, tiny_model


def _data(seed, size, n=1, b=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, *size, generator=g) for _ in range(n)]


def _dense(out):
    return out[0] if isinstance(out, tuple) else out


class Conv3x3Inputs:
    """Records input and weight of every 3x3 conv2d call (wraps torch's function, independent of the module
    under test)."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        real = F.conv2d

        def spy(x, w, *args, **kw):
            if tuple(w.shape[2:]) == (3, 3):
                self.calls.append((x.detach().clone(), w.detach().clone()))
            return real(x, w, *args, **kw)

        monkeypatch.setattr(torch.nn.functional, "conv2d", spy)


def _expected_names(task):
    spec = HEADS[task]
    return ["decode_head.input_conv.0"] + [f"decode_head.upsample_blocks.{i}.0" for i in range(len(spec.upsample))]


def _full_resolution_names(task):
    return [f"decode_head.conv_layers.{3 * i}" for i in range(len(HEADS[task].conv))]


@pytest.fixture(scope="module")
def normal():
    return tiny_model("normal")


@pytest.fixture(scope="module")
def normal_head(normal):
    return quantize(normal, "int8", calibration=_data(1, input_size("normal")), input_size=input_size("normal"),
                    activation_mode="static", head="int8", progress=False)


@pytest.mark.parametrize("task", ["normal", "pointmap", "albedo"])
def test_every_upsampling_3x3_convolution_and_nothing_else(task):
    model, size = tiny_model(task), input_size(task)
    q, report = quantize(model, "int8-weight", calibration=_data(1, size), input_size=size, head="int8", progress=False)
    assert list(quantized_convs(q)) == _expected_names(task) and not quantized_deconvs(q)
    float_convs = [n for n, m in q.named_modules() if n.startswith("decode_head.") and type(m) is torch.nn.Conv2d]
    full_resolution = _full_resolution_names(task)
    assert full_resolution and set(full_resolution) <= set(float_convs)
    assert all(dict(q.named_modules())[n].kernel_size == (1, 1) for n in float_convs if n not in full_resolution)
    assert f"decode_head.conv_{task}" in float_convs
    if task == "pointmap":
        assert {f"decode_head.scale_conv_layers.{i}" for i in (0, 3, 6)} <= set(float_convs)
    n = len(_expected_names(task))
    assert any(f"int8 head: {n} 3x3 convolutions with int8 weights per output channel" in x for x in report.notes)


def test_needs_calibration_data(normal):
    with pytest.raises(CalibrationError, match=r"head='int8' needs calibration data to set the input ranges of the "
                                               r"head's 5 3x3 convolutions"):
        quantize(normal, "int8-weight", head="int8", progress=False)


def test_scales_are_calibration_maxima_over_127(normal, monkeypatch):
    """Input scales: max |x| / 127 of what each upsampling 3x3 convolution reads over the calibration set (the
    float model, fp32 forwards; the spy sees the full-resolution ones after them too). Weight scales: max |w| over (in, kh, kw) / 127 per output channel; bias as is."""
    size = input_size("normal")
    data = _data(1, size, n=2)
    q, _ = quantize(normal, "int8-weight", calibration=data, input_size=size, head="int8",
                    calibration_precision="fp32", progress=False)
    spy = Conv3x3Inputs(monkeypatch)
    with torch.no_grad():
        for x in data:
            normal(x)
    quants = list(quantized_convs(q).values())
    per_call = len(spy.calls) // len(data)
    assert per_call == 8 and len(quants) == 5
    floats = [normal.get_submodule(n) for n in _expected_names("normal")]
    for i, (m, f) in enumerate(zip(quants, floats, strict=True)):
        amax = max(float(spy.calls[i + b * per_call][0].abs().max()) for b in range(len(data)))
        torch.testing.assert_close(float(m.input_scale), amax / 127, rtol=1e-4, atol=0)
        w = f.weight.detach()
        want = w.abs().amax(dim=(1, 2, 3)) / 127
        torch.testing.assert_close(m.weight_scale, want, rtol=1e-6, atol=0)
        assert m.weight.dtype == torch.int8 and int(m.weight.abs().max()) == 127
        assert bool(((m.dequantized_weight() - w).abs() <= want.view(-1, 1, 1, 1) / 2 * (1 + 1e-6)).all())
        assert torch.equal(m.bias.detach(), f.bias.detach())


def test_calibration_stops_the_head_once_its_int8_layers_have_read_their_inputs(normal, monkeypatch):
    """Each calibration batch runs the head's first four 3x3 convolutions only: the last upsampling one has
    read its input when the observers are done, and neither it nor the full-resolution ones are computed;
    the scales are those a full forward gives (the test above)."""
    size = input_size("normal")
    data = _data(1, size, n=2)
    spy = Conv3x3Inputs(monkeypatch)
    quantize(normal, "int8-weight", calibration=data, input_size=size, head="int8", calibration_precision="fp32",
             report_samples=0, batch_size=2, progress=False)  # two batches of two images
    out_channels = [int(w.shape[0]) for _, w in spy.calls]
    spec = HEADS["normal"]
    assert out_channels == [spec.in_channels, 4 * spec.upsample[0], 4 * spec.upsample[1], 4 * spec.upsample[2]] * len(data)
    assert max(x.shape[-1] for x, _ in spy.calls) < size[1] // 2


@pytest.mark.parametrize("task", ["seg", "pointmap"])
def test_a_head_runs_until_the_named_layers_have_read_their_inputs(task):
    """A transposed-convolution head stops before its last transposed convolution; a pointmap head also
    skips its scale branch. Layers outside the names run as usual before that moment."""
    from sapiens2_edge.quantization.head_int8 import head_layer_names, run_head_until_observed

    model = tiny_model(task)
    names = head_layer_names(model)
    ran: list[str] = []
    for n, m in model.decode_head.named_modules(prefix="decode_head"):
        if not list(m.children()):
            m.register_forward_hook(lambda _m, _a, _o, n=n: ran.append(n))
    read: list[str] = []
    for n in names:
        model.get_submodule(n).register_forward_pre_hook(lambda _m, _a, n=n: read.append(n))
    size = input_size(task)
    feat = torch.randn(1, 64, size[0] // 16, size[1] // 16)
    with torch.no_grad():
        run_head_until_observed(model, feat, names, size[0] * size[1])
    assert read == names and names[-1] not in ran and names[0] in ran
    assert not [n for n in ran if n.startswith(("decode_head.conv_layers", "decode_head.scale", "decode_head.conv_"))]
    assert not model.decode_head._forward_pre_hooks and all(not model.get_submodule(n)._forward_pre_hooks or
                                                            len(model.get_submodule(n)._forward_pre_hooks) == 1
                                                            for n in names)  # its own hooks are gone


def test_the_head_reads_a_batch_a_few_images_at_a_time_with_the_same_maxima(monkeypatch):
    """Calibration's head forwards take at most HEAD_PIXELS input pixels: a batch of three images at a limit of
    two images' pixels goes through as two slices, and the observers see the maxima of the whole batch."""
    from sapiens2_edge.quantization import head_int8
    from sapiens2_edge.quantization.observers import attach_input_observers

    model = tiny_model("normal")
    names = head_int8.head_layer_names(model)
    size = input_size("normal")
    feat = torch.randn(3, 64, size[0] // 16, size[1] // 16, generator=torch.Generator().manual_seed(3))
    feat[2] *= 5  # the last image holds the maxima
    whole = {n: head_int8.HeadInputObserver() for n in names}
    remove = attach_input_observers(model, whole)
    with torch.no_grad():
        head_int8.run_head_until_observed(model, feat, names, size[0] * size[1])  # far below the limit
    remove()
    monkeypatch.setattr(head_int8, "HEAD_PIXELS", 2 * size[0] * size[1])
    sliced = {n: head_int8.HeadInputObserver() for n in names}
    remove = attach_input_observers(model, sliced)
    batches: list[int] = []
    model.get_submodule(names[0]).register_forward_pre_hook(lambda _m, a: batches.append(a[0].shape[0]))
    with torch.no_grad():
        head_int8.run_head_until_observed(model, feat, names, size[0] * size[1])
    remove()
    assert batches == [2, 1]
    for n in names:  # the same images; oneDNN sums a smaller batch's convolutions in another order
        assert sliced[n].amax == pytest.approx(whole[n].amax, rel=1e-5)
    assert all(o.amax > 0 for o in whole.values())


def test_head_reads_int8_grids(normal_head, monkeypatch):
    q, _ = normal_head
    spy = Conv3x3Inputs(monkeypatch)
    with torch.no_grad():
        q(_data(7, input_size("normal"))[0] * 1.5)  # beyond the calibrated ranges too: clipped, never off the grid
    quants = list(quantized_convs(q).values())
    assert len(spy.calls) == len(quants) + 3  # then the three full-resolution ones, float
    for (x, w), m in zip(spy.calls[:len(quants)], quants, strict=True):
        n = x / m.input_scale
        assert float((n - n.round()).abs().max()) < 1e-4 and float(n.abs().max()) < 127 + 1e-4
        k = w / m.weight_scale.view(-1, 1, 1, 1)
        assert float((k - k.round()).abs().max()) < 1e-4


def test_checkpoint_round_trip_and_strict_scales(normal_head, tmp_path):
    q, _ = normal_head
    path = save_quantized(q, tmp_path / "q.safetensors")
    back = load_quantized(path)
    assert back.recipe.head == "int8" and list(quantized_convs(back)) == _expected_names("normal")
    x = _data(3, input_size("normal"))[0]
    with torch.no_grad():
        assert torch.equal(q(x), back(x))
    header, tensors = read_header(path), read_tensors(path)
    assert header.tensors["decode_head.upsample_blocks.2.0.weight"].dtype == "I8"
    assert header.tensors["decode_head.upsample_blocks.2.0.bias"].dtype == "F32"
    assert header.tensors["decode_head.conv_normal.weight"].dtype == "F32"
    assert header.tensors["decode_head.conv_layers.3.weight"].dtype == "F32"  # full resolution: float
    key = "decode_head.upsample_blocks.3.0.input_scale"
    assert header.tensors[key].dtype == "F32" and tuple(header.tensors[key].shape) == (1,)
    del tensors[key]
    bad = write_tensors(tensors, tmp_path / "missing.safetensors", metadata=header.metadata)
    with pytest.raises(StateDictMismatchError, match="upsample_blocks.3.0.input_scale"):
        load_quantized(bad)


@pytest.fixture(scope="module")
def weight_only_head(normal):
    """int8-weight linears (what the engine reads from a plain quantized file) and the int8 head."""
    size = input_size("normal")
    return quantize(normal, "int8-weight", calibration=_data(1, size), input_size=size, head="int8", progress=False)[0]


@pytest.fixture(scope="module", params=["seg", "normal"])
def coarse(request):
    """The head (transposed convolutions for seg, 3x3 ones for normal) with 16x coarser input grids (~8
    levels): an artifact that ignored them would be far from this reference, one that applies them close.
    int8-weight linears: float activations elsewhere."""
    model, size = tiny_model(request.param), input_size(request.param)
    q, _ = quantize(model, "int8-weight", calibration=_data(1, size), input_size=size, head="int8", progress=False)
    with torch.no_grad():
        for m in quantized_head_layers(q).values():
            m.input_scale.mul_(16)
    plain, _ = quantize(model, "int8-weight", progress=False)
    return q, plain, size


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "torch", "ort", "native"])
def test_artifacts_compute_the_int8_head(coarse, fmt, tmp_path):
    # the native engine in fp32: oneDNN's int8 transposed convolution where exact, else the float form
    q, plain, size = coarse
    assert_artifact_applies_grids(q, plain, _data(11, size)[0], fmt, tmp_path / fmt, size, "head", 0.1)


def test_onnx_graph_has_int8_weights_and_input_qdq_per_upsampling_convolution(normal_head, tmp_path):
    import onnx

    q, _ = normal_head
    s2e.export(q, tmp_path / "o", format="onnx", input_size=input_size("normal"), max_batch=1)
    g = onnx.load(str(tmp_path / "o" / "model.onnx")).graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    convs = [n for n in g.node if n.op_type == "Conv" and n.input[1] in producer
             and producer[n.input[1]].op_type == "DequantizeLinear"]
    assert len(convs) == 5
    for n in convs:
        x, w = producer[n.input[0]], producer[n.input[1]]
        assert x.op_type == "DequantizeLinear" and producer[x.input[0]].op_type == "QuantizeLinear"
        assert w.op_type == "DequantizeLinear" and len(w.input) == 2  # zero point 0: no input
        assert [a.i for a in w.attribute if a.name == "axis"] == [0]  # the output channels
        assert inits[w.input[0]].data_type == onnx.TensorProto.INT8 and len(n.input) == 3  # and the bias


def test_openvino_runs_the_upsampling_convolutions_in_int8(normal_head, tmp_path):
    """Where this CPU multiplies int8 natively (VNNI / AMX), OpenVINO's compiled model runs every upsampling
    3x3 convolution of the head with an int8 kernel, the full-resolution ones and the final 1x1 in float."""
    from sapiens2_edge.exporters.onnx_quant import int8_dot_products
    from sapiens2_edge.runtime.openvino_backend import import_openvino

    signed, why = int8_dot_products()
    if not signed:
        pytest.skip(f"OpenVINO's int8 convolutions need VNNI or AMX: {why}")
    q, _ = normal_head
    s2e.export(q, tmp_path / "v", format="openvino", input_size=input_size("normal"), max_batch=1)
    ov = import_openvino()
    compiled = ov.Core().compile_model(str(tmp_path / "v" / "openvino" / "model.xml"), "CPU")
    convs = [n.get_rt_info()["runtimePrecision"].astype(str) for n in compiled.get_runtime_model().get_ordered_ops()
             if n.get_rt_info()["layerType"].astype(str) == "Convolution"]
    # the patch embedding, the full-resolution 3x3 and the final 1x1 convolutions in float, the head's five
    # upsampling 3x3 ones in int8
    assert sorted(convs).count("i8") + sorted(convs).count("u8") == 5 and len(convs) == 10, convs


def test_backbone_only_models_are_refused():
    with pytest.raises(ConfigError, match=r"head='int8' quantizes the head's transposed convolutions \(pose, seg\) or "
                                          r"upsampling 3x3 convolutions \(normal, pointmap, albedo\); a backbone-only "
                                          r"model has none: quantize with head='float'"):
        quantize(tiny_model(None), "int8", calibration=_data(1, input_size(None)), input_size=input_size(None),
                 head="int8", progress=False)


def test_quantconv_refuses_other_forms():
    with pytest.raises(ConfigError, match="head='int8' takes convolutions with a square kernel of odd size, stride 1"):
        QuantConv.like(torch.nn.Conv2d(4, 4, 3, stride=2, padding=1))
    with pytest.raises(ConfigError, match="a bias and no groups or dilation"):
        QuantConv.like(torch.nn.Conv2d(4, 4, 3, padding=1, bias=False))


@pytest.mark.parametrize("task,pre", [("seg", "decode_head.deconv_layers.0"),
                                      ("normal", "decode_head.upsample_blocks.1.0")])
def test_native_engine_refuses_an_inconsistent_int8_head(task, pre, tmp_path):
    """The engine reads a quantized checkpoint file as it is: int8 (transposed) convolution weights need
    their input scale, and an input scale needs int8 weights; a dense head's 1x1 convolutions stay float."""
    from sapiens2_edge import _native as native

    size = input_size(task)
    q, _ = quantize(tiny_model(task), "int8-weight", calibration=_data(1, size), input_size=size, head="int8",
                    progress=False)
    path = save_quantized(q, tmp_path / "q.safetensors")
    assert native.Engine(str(path)).task == task
    header, tensors = read_header(path), read_tensors(path)
    no_scale = {k: v for k, v in tensors.items() if k != pre + ".input_scale"}
    with pytest.raises(StateDictMismatchError, match=f"missing tensor '{pre}.input_scale' of shape \\(1,\\)"):
        native.Engine(str(write_tensors(no_scale, tmp_path / "a.safetensors", metadata=header.metadata)))
    float_w = {k: v for k, v in tensors.items() if k != pre + ".weight_scale"}
    float_w[pre + ".weight"] = quantized_head_layers(q)[pre].dequantized_weight()
    with pytest.raises(StateDictMismatchError, match=f"'{pre}.input_scale' belongs to int8 weights, but "
                                                   f"'{pre}.weight' is F32"):
        native.Engine(str(write_tensors(float_w, tmp_path / "b.safetensors", metadata=header.metadata)))
    if task != "normal":
        return
    final = dict(tensors)
    final["decode_head.conv_normal.weight"] = torch.ones_like(final["decode_head.conv_normal.weight"], dtype=torch.int8)
    final["decode_head.conv_normal.weight_scale"] = torch.ones(3)
    with pytest.raises(StateDictMismatchError, match="'decode_head.conv_normal.weight' is I8; only linear weights of the "
                                                   "backbone and the head's transposed and 3x3 convolutions"):
        native.Engine(str(write_tensors(final, tmp_path / "c.safetensors", metadata=header.metadata)))


def test_int8_head_matches_the_torch_model_through_the_native_engine(weight_only_head, tmp_path):
    """The engine's recipe numerics (inputs on the grid, weights dequantized) against torch's, within 1e-4 or
    twice the distance between two float evaluations of the same recipe by torch itself (its convolutions
    channels first and channels last): each int8 input rounds what the previous float convolution summed,
    and where a sum order moves a value across a rounding step the difference grows through the head. On an
    AVX2 CPU without int8 dot products the engine's head is a float convolution on the grid, and torch's two
    layouts measured 2.5e-4 apart on this fixture, as far as the engine from either."""
    from sapiens2_edge import _native as native

    q = weight_only_head
    path = save_quantized(q, tmp_path / "q.safetensors")
    x = _data(5, input_size("normal"), b=1)[0]

    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))
    with torch.no_grad():
        want = _dense(q(x)).numpy()
        channels_last = copy.deepcopy(q).to(memory_format=torch.channels_last)
        spread = rel(_dense(channels_last(x.contiguous(memory_format=torch.channels_last))).numpy(), want)
    got = np.asarray(native.Engine(str(path)).run(x.numpy())[0])
    assert spread < 1e-3  # two float orders of the recipe: rounding flips, not a different computation
    assert rel(got, want) <= max(1e-4, 2 * spread)


def test_trained_normal_fixture_keeps_its_gate():
    """On the trained normal fixture (real structure, not random weights): the int8 static recipe with int8
    attention inputs and the int8 head (its 5 upsampling 3x3 convolutions) stays within the normal gate of the float
    model over held-out people, and closer to the true normals than a model that learned nothing."""
    from tests.fixtures.gates import SIZE, assert_int8_gates
    from tests.fixtures.synthetic import FACING_CAMERA, make_people, normal_angles, surface_normals
    model = s2e.load_model(Path(__file__).parent / "fixtures" / "data" / "trained_tiny_normal.safetensors")
    calib = list(make_people(16, seed=1001, size=SIZE)[0])
    q, _ = quantize(model, "int8", calibration=calib, input_size=SIZE, activation_mode="static",
                    attention="int8", head="int8", progress=False)
    assert len(quantized_convs(q)) == 5
    assert_int8_gates(model, q, "normal")
    images, labels, _, _ = make_people(8, seed=3003, size=SIZE)
    truth = surface_normals(labels)
    pred = np.stack([r.normal for r in s2e.Predictor(q, input_size=SIZE)(list(images))])
    angle = normal_angles(pred, truth, labels).mean()
    facing = normal_angles(np.broadcast_to(FACING_CAMERA, truth.shape), truth, labels).mean()
    assert angle < facing - 3, (angle, facing)
