"""int8 head (recipe ``head="int8"``): the pose / seg head's transposed convolutions read int8 inputs on
their calibrated grids and int8 weights per output channel, the scales are what calibration saw, the
checkpoint round-trips them, the ONNX-family artifacts compute them (OpenVINO with its int8 kernels),
the formats without an int8 head refuse it, and the trained fixtures keep their fidelity gates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sapiens2_edge as s2e
import sapiens2_edge.quantization.head_int8 as head_int8
from sapiens2_edge.errors import CalibrationError, ConfigError, StateDictMismatchError
from sapiens2_edge.exporters import read_manifest
from sapiens2_edge.models.checkpoint import read_header, read_tensors, write_tensors
from sapiens2_edge.quantization import load_quantized, quantize, save_quantized
from sapiens2_edge.quantization.config import QuantRecipe, make_recipe
from sapiens2_edge.quantization.head_int8 import QuantDeconv, quantized_deconvs
from tests.fixtures.gates import assert_int8_gates
from tests.fixtures.synthetic import make_people
from tests.fixtures.tiny import INPUT, tiny_model

DATA = Path(__file__).parent / "fixtures" / "data"
SIZE = (128, 96)


def _data(seed, n=1, b=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, *INPUT, generator=g) for _ in range(n)]


class DeconvInputs:
    """Records input and weight of every conv_transpose2d call (wraps torch's function, independent of
    the module under test)."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        real = F.conv_transpose2d

        def spy(x, w, *args, **kw):
            self.calls.append((x.detach().clone(), w.detach().clone()))
            return real(x, w, *args, **kw)

        monkeypatch.setattr(torch.nn.functional, "conv_transpose2d", spy)


@pytest.fixture(scope="module")
def seg():
    return tiny_model("seg")


@pytest.fixture(scope="module")
def seg_head(seg):
    return quantize(seg, "int8", calibration=_data(1), input_size=INPUT, activation_mode="static", head="int8",
                    progress=False)


def test_recipe_field_round_trips_and_is_checked():
    r = make_recipe("int8", head="int8")
    assert QuantRecipe.from_dict(r.to_dict()) == r and r.to_dict()["head"] == "int8"
    old = {k: v for k, v in r.to_dict().items() if k != "head"}  # a checkpoint written before the field
    assert QuantRecipe.from_dict(old).head == "float"
    with pytest.raises(ConfigError, match=r"head='int4' is not supported; expected one of 'float', 'int8'"):
        make_recipe("int8", head="int4")


def test_needs_calibration_data(seg):
    with pytest.raises(CalibrationError, match=r"head='int8' needs calibration data to set the input ranges of the "
                                               r"head's 4 transposed convolutions"):
        quantize(seg, "int8-weight", head="int8", progress=False)


@pytest.mark.parametrize("opts", [{"activation_mode": "dynamic", "smoothquant_alpha": None},
                                  {"activation_mode": "static", "estimator": "minmax"},
                                  {"activation_mode": "static"}],
                         ids=["own-pass", "with-ranges-pass", "with-smoothquant-blockwise"])
def test_scales_are_calibration_maxima_over_127(seg, monkeypatch, opts):
    """Input scales: max |x| / 127 of what each transposed convolution reads over the calibration set
    (measured on the float model with fp32 forwards; SmoothQuant changes those inputs only by float
    rounding). Weight scales: max |w| over (in, kh, kw) / 127 per output channel."""
    data = _data(1, n=2)
    q, report = quantize(seg, "int8", calibration=data, input_size=INPUT, head="int8",
                         calibration_precision="fp32", progress=False, **opts)
    spy = DeconvInputs(monkeypatch)
    with torch.no_grad():
        for x in data:
            seg(x)
    quants = list(quantized_deconvs(q).values())
    per_call = len(spy.calls) // len(data)
    assert per_call == len(quants) == 4
    floats = [m for n, m in seg.named_modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    for i, (m, f) in enumerate(zip(quants, floats, strict=True)):
        amax = max(float(spy.calls[i + b * per_call][0].abs().max()) for b in range(len(data)))
        torch.testing.assert_close(float(m.input_scale), amax / 127, rtol=1e-4, atol=0)
        w = f.weight.detach()
        want = w.abs().amax(dim=(0, 2, 3)) / 127
        torch.testing.assert_close(m.weight_scale, want, rtol=1e-6, atol=0)
        assert m.weight.dtype == torch.int8 and int(m.weight.abs().max()) == 127
        # every weight within half a step of the float one
        assert bool(((m.dequantized_weight() - w).abs() <= want.view(1, -1, 1, 1) / 2 * (1 + 1e-6)).all())
    assert any("int8 head: 4 transposed convolutions" in n for n in report.notes)


def test_head_reads_int8_grids(seg_head, monkeypatch):
    q, _ = seg_head
    spy = DeconvInputs(monkeypatch)
    with torch.no_grad():
        q(_data(7)[0] * 1.5)  # beyond the calibrated ranges too: clipped, never off the grid
    quants = list(quantized_deconvs(q).values())
    assert len(spy.calls) == len(quants)
    for (x, w), m in zip(spy.calls, quants, strict=True):
        n = x / m.input_scale
        assert float((n - n.round()).abs().max()) < 1e-4 and float(n.abs().max()) < 127 + 1e-4
        k = w / m.weight_scale.view(1, -1, 1, 1)
        assert float((k - k.round()).abs().max()) < 1e-4


def test_checkpoint_round_trip_and_strict_scales(seg_head, tmp_path):
    q, _ = seg_head
    path = save_quantized(q, tmp_path / "q.safetensors")
    back = load_quantized(path)
    assert back.recipe.head == "int8" and len(quantized_deconvs(back)) == 4
    x = _data(3)[0]
    with torch.no_grad():
        assert torch.equal(q(x), back(x))
    header, tensors = read_header(path), read_tensors(path)
    assert header.tensors["decode_head.deconv_layers.0.weight"].dtype == "I8"
    key = "decode_head.deconv_layers.3.input_scale"
    assert header.tensors[key].dtype == "F32" and tuple(header.tensors[key].shape) == (1,)
    del tensors[key]
    bad = write_tensors(tensors, tmp_path / "missing.safetensors", metadata=header.metadata)
    with pytest.raises(StateDictMismatchError, match="deconv_layers.3.input_scale"):
        load_quantized(bad)


def test_fp16_float_storage_keeps_the_head_scales_float32(seg, tmp_path):
    q, _ = quantize(seg, "int8", calibration=_data(1), input_size=INPUT, head="int8", float_storage="fp16",
                    progress=False)
    header = read_header(save_quantized(q, tmp_path / "q.safetensors"))
    assert header.tensors["decode_head.deconv_layers.0.weight_scale"].dtype == "F32"
    assert header.tensors["decode_head.conv_seg.weight"].dtype == "F16"


def test_onnx_graph_has_int8_weights_and_input_qdq_per_transposed_convolution(seg_head, tmp_path):
    """Standard graph: each transposed convolution reads its input through Q/DQ and its int8 kernel through a
    per-output-channel DQ. The graph for ONNX Runtime (the default) writes each as four parity convolutions,
    each reading the same Q/DQ input (padded) and one int8 slice of the kernel through its own DQ."""
    import onnx

    q, _ = seg_head
    s2e.export(q, tmp_path / "s", format="onnx", input_size=INPUT, max_batch=1, graph="standard")
    s2e.export(q, tmp_path / "a", format="onnx", input_size=INPUT, max_batch=1)
    for form, op, per_layer, axis in (("s", "ConvTranspose", 1, 1), ("a", "Conv", 4, 0)):
        g = onnx.load(str(tmp_path / form / "model.onnx")).graph
        producer = {o: n for n in g.node for o in n.output}
        inits = {i.name: i for i in g.initializer}
        convs = [n for n in g.node if n.op_type == op and n.input[1] in producer
                 and producer[n.input[1]].op_type == "DequantizeLinear"]
        assert len(convs) == 4 * per_layer and not (form == "a" and any(n.op_type == "ConvTranspose" for n in g.node))
        for n in convs:
            x, w = producer[n.input[0]], producer[n.input[1]]
            x = producer[x.input[0]] if x.op_type == "Pad" else x  # the parity convolution's window
            assert x.op_type == "DequantizeLinear" and producer[x.input[0]].op_type == "QuantizeLinear"
            assert w.op_type == "DequantizeLinear" and len(w.input) == 2  # zero point 0: no input
            assert [a.i for a in w.attribute if a.name == "axis"] == [axis]  # the output channels
            assert inits[w.input[0]].data_type == onnx.TensorProto.INT8


def test_openvino_runs_the_transposed_convolutions_in_int8(seg_head, tmp_path):
    """Where this CPU multiplies int8 natively (VNNI / AMX), OpenVINO's compiled model runs every
    transposed convolution with an int8 kernel (the speed the int8 head is for)."""
    from sapiens2_edge.exporters.onnx_quant import int8_dot_products
    from sapiens2_edge.runtime.openvino_backend import import_openvino

    signed, why = int8_dot_products()
    if not signed:
        pytest.skip(f"OpenVINO's int8 convolutions need VNNI or AMX: {why}")
    q, _ = seg_head
    s2e.export(q, tmp_path / "v", format="openvino", input_size=INPUT, max_batch=1)
    ov = import_openvino()
    compiled = ov.Core().compile_model(str(tmp_path / "v" / "openvino" / "model.xml"), "CPU")
    kinds = [n.get_rt_info()["runtimePrecision"].astype(str) for n in compiled.get_runtime_model().get_ordered_ops()
             if n.get_rt_info()["layerType"].astype(str) == "Deconvolution"]
    assert kinds == ["i8"] * 4, kinds


def test_openvino_keeps_the_head_float_on_a_cpu_without_int8_dot_products(seg_head, tmp_path, monkeypatch):
    """Without VNNI / AMX OpenVINO's int8 convolutions miss the recipe (rel L2 0.12 on an AVX2-only EPYC,
    static batch): its graph then computes the head's int8 rounding in float ops around a float
    convolution, and the artifact passes its own check against the torch model."""
    from sapiens2_edge.exporters import onnx_quant
    from sapiens2_edge.runtime.openvino_backend import import_openvino

    monkeypatch.setattr(onnx_quant, "int8_dot_products", lambda cpuinfo=None: (False, "no VNNI (test)"))
    q, _ = seg_head
    root = s2e.export(q, tmp_path / "v", format="openvino", input_size=INPUT, max_batch=1)  # verified as it exports
    assert read_manifest(root).precision == "int8"
    ov = import_openvino()
    model = ov.Core().read_model(str(root / "openvino" / "model.xml"))
    deconvs = [n for n in model.get_ordered_ops() if n.get_type_name() == "ConvolutionBackpropData"]
    assert len(deconvs) == 4
    assert not any(n.get_type_name() == "FakeQuantize" for d in deconvs for n in
                   (d.input_value(0).get_node(), d.input_value(1).get_node()))
    compiled = ov.Core().compile_model(model, "CPU")
    kinds = [n.get_rt_info()["runtimePrecision"].astype(str) for n in compiled.get_runtime_model().get_ordered_ops()
             if n.get_rt_info()["layerType"].astype(str) == "Deconvolution"]
    assert len(kinds) == 4 and "i8" not in kinds and "u8" not in kinds, kinds


@pytest.mark.parametrize("fmt", ["coreml", "litert", "executorch"])
def test_formats_without_an_int8_head_refuse_it(seg_head, fmt, tmp_path):
    q, _ = seg_head
    with pytest.raises(ConfigError, match=f"the {fmt} format has no int8 head .*; export it to onnx, openvino, "
                                          "torch, native, ort, or quantize with head='float'"):
        s2e.export(q, tmp_path / fmt, format=fmt, input_size=INPUT)
    assert not (tmp_path / fmt).exists()
    with pytest.raises(ConfigError, match=f"the {fmt} format has no int8 head"):  # before quantizing
        s2e.export(tiny_model("seg"), tmp_path / fmt, format=fmt, scheme="int8-weight",
                   quantize_options={"head": "int8"}, input_size=INPUT)


def test_quantdeconv_refuses_other_forms():
    with pytest.raises(ConfigError, match="head='int8' takes transposed convolutions with a square kernel"):
        QuantDeconv.like(torch.nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, bias=True))


@pytest.mark.parametrize("task", ["seg", "pose"])
def test_trained_fixtures_keep_their_gates(task):
    """seg agreement with the float model >= 99 %, pose displacement <= 0.5 px (the int8 gates), with the
    int8 head and int8 attention inputs on top of the int8 static recipe."""
    model = s2e.load_model(DATA / f"trained_tiny_{task}.safetensors")
    calib = list(make_people(16, seed=1001, size=SIZE)[0])
    q, _ = s2e.quantize(model, "int8", calibration=calib, input_size=SIZE, activation_mode="static",
                        attention="int8", head="int8", progress=False)
    assert len(quantized_deconvs(q)) == len(head_int8.deconv_names(model)) > 0
    assert_int8_gates(model, q, task)
