"""Schemes as config objects: each one equals its string shorthand bit for bit, ``apply`` with a
per-layer mapping, the decomposed export form, the export precision rule, and bad configs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sapiens2_edge.quantization as q
from sapiens2_edge.errors import CalibrationError, ConfigError, QuantizationError
from sapiens2_edge.quantization import (
    Calibration,
    Dynamic,
    Fp8,
    Fp16,
    Int8,
    Int8WeightOnly,
    Mixed,
    QuantLinear,
    Static,
    apply,
    load_quantized,
    quantize,
    save_quantized,
)
from sapiens2_edge.quantization.config import QuantRecipe, layer_config
from tests.fixtures.tiny import INPUT, tiny_model

CALIB = [torch.randn(2, 3, *INPUT, generator=torch.Generator().manual_seed(i)) for i in range(2)]
X = torch.randn(1, 3, *INPUT, generator=torch.Generator().manual_seed(9))
WQ, W3 = "backbone.blocks.0.attn.wq", "backbone.blocks.1.ffn.w3"


@pytest.fixture(scope="module")
def seg():
    return tiny_model("seg")


def assert_same(a, b):
    """Bit-identical quantized tensors, outputs and recorded recipes."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    with torch.no_grad():
        assert torch.equal(a(X), b(X))
    assert a.recipe_dict() == b.recipe_dict()


@pytest.mark.parametrize("config, scheme, options", [
    (Int8WeightOnly(), "int8-weight", {}),
    (Int8WeightOnly("per_tensor"), "int8-weight", {"weight_granularity": "per_tensor"}),
    (Fp16(), "fp16", {}),
    (Int8(), "int8", {}),
    (Int8(Static("mse")), "int8", {"activation_mode": "static", "estimator": "mse"}),
    (Int8(activations="static", smoothquant_alpha=None), "int8", {"activation_mode": "static", "smoothquant_alpha": None}),
    (Int8(Dynamic(), smoothquant_alpha=0.8), "int8", {"smoothquant_alpha": 0.8}),
    (Fp8(), "fp8", {}),
    (Fp8(Static("minmax")), "fp8", {"activation_mode": "static", "estimator": "minmax"}),
    (Mixed(layers={WQ: Fp8(), "backbone.blocks.2.*": "fp16", W3: "float"}), "mixed",
     {"layer_schemes": {WQ: "fp8", "backbone.blocks.2.*": "fp16", W3: "float"}}),
])
def test_config_object_equals_string_shorthand(seg, config, scheme, options):
    a, ra = quantize(seg, scheme, calibration=CALIB, input_size=INPUT, progress=False, **options)
    b, rb = quantize(seg, config, calibration=Calibration(CALIB, input_size=INPUT), progress=False)
    assert_same(a, b)
    assert ra.notes == rb.notes and [lr.smoothed for lr in ra.layers] == [lr.smoothed for lr in rb.layers]


def test_calibration_object_holds_the_settings(seg):
    a, ra = quantize(seg, "int8", calibration=CALIB, calibration_size=3, batch_size=1, input_size=INPUT,
                     report_samples=2, activation_mode="static")
    cal = Calibration(CALIB, num_samples=3, batch_size=1, input_size=INPUT, report_samples=2)
    b, rb = quantize(seg, Int8(Static()), calibration=cal)
    assert_same(a, b)
    assert rb.calibration["num_samples"] == 3 and rb.calibration["report_samples"] == 2
    assert b.recipe.calibration_size == 3 and b.recipe.batch_size == 1
    c, _ = quantize(seg, "int8", calibration=cal, activation_mode="static")  # a Calibration with a string scheme
    assert_same(a, c)


def test_auto_smoothquant_without_calibration_is_skipped_and_said(seg):
    a, ra = quantize(seg, "int8")
    b, rb = quantize(seg, Int8())
    assert_same(a, b)
    assert rb.notes == ra.notes and "SmoothQuant skipped" in rb.notes[0] and b.recipe.smoothquant_alpha is None
    with pytest.raises(CalibrationError, match=r"SmoothQuant \(smoothquant_alpha=0.5\) needs calibration data"):
        quantize(seg, Int8(smoothquant_alpha=0.5))


def test_mixed_budget_object_equals_shorthand(seg):
    keep = {"exclude": ("backbone.blocks.[1-9].*",)}  # block 0 only: six layers, a quick search
    a, ra = quantize(seg, "mixed", calibration=CALIB, budget="sqnr_db>=20", input_size=INPUT, **keep)
    b, rb = quantize(seg, Mixed(budget="sqnr_db>=20"), calibration=Calibration(CALIB, input_size=INPUT), **keep)
    assert_same(a, b)
    assert ra.recipe["search"] == rb.recipe["search"] and ra.fidelity == rb.fidelity


def test_apply_per_layer_mapping(seg, tmp_path):
    mapping = {WQ: Fp8(), W3: Int8WeightOnly("per_tensor"), "backbone.blocks.2.attn.wv": Int8(Static("mse")),
               "backbone.blocks.3.ffn.w12": "fp16", "backbone.blocks.4.attn.wk": "float"}
    qm, report = apply(seg, mapping, Calibration(CALIB, input_size=INPUT))
    assert set(qm.quantized_layers()) == set(mapping) - {"backbone.blocks.4.attn.wk"}
    b = qm.backbone.blocks
    assert b[0].attn.wq.weight.dtype == torch.float8_e4m3fn and b[0].attn.wq.config.activation.mode == "dynamic"
    assert b[1].ffn.w3.weight_scale.shape == (1,) and b[1].ffn.w3.config.activation is None
    assert b[2].attn.wv.config.activation.estimator == "mse" and b[2].attn.wv.input_scale is not None
    assert b[3].ffn.w12.weight.dtype == torch.float16
    assert type(b[4].attn.wk) is nn.Linear and type(b[0].attn.wk) is nn.Linear
    assert qm.scheme == "mixed" and {lr.name for lr in report.layers} == set(qm.quantized_layers())
    # layers whose config the recipe's settings do not give are recorded per layer, and load back
    recorded = qm.recipe_dict()["layer_configs"]
    assert set(recorded) >= {W3, "backbone.blocks.2.attn.wv"}
    back = load_quantized(save_quantized(qm, tmp_path / "applied.safetensors"))
    assert {n: m.config for n, m in back.quantized_layers().items()} == \
        {n: m.config for n, m in qm.quantized_layers().items()}
    with torch.no_grad():
        assert torch.equal(back(X), qm(X))


def test_apply_equals_quantize_for_the_same_layers(seg):
    a, _ = quantize(seg, "int8-weight")
    names = list(a.quantized_layers())
    b, _ = apply(seg, {n: Int8WeightOnly() for n in names})
    assert_same(a, b)
    assert b.scheme == "int8-weight" and "layer_configs" not in b.recipe_dict()


def test_decomposed_form_computes_what_quantlinear_computes():
    lin = nn.Linear(64, 48)
    x = torch.randn(2, 20, 64, generator=torch.Generator().manual_seed(3))
    x[:, :9] *= 10
    for scheme, mode in [("fp16", "dynamic"), ("int8-weight", "dynamic"), ("int8", "dynamic"), ("int8", "static"),
                         ("fp8", "dynamic"), ("fp8", "static")]:
        layer = QuantLinear.from_float(lin, layer_config(scheme, activation_mode=mode), 9, torch.tensor([0.01]))
        layer.set_kernel("reference")
        d = layer.decompose()
        assert d.kind.startswith({"fp16": "fp16", "int8-weight": "int8-weight"}.get(scheme, f"{scheme}/{mode}"))
        assert d.prefix_tokens == (9 if d.act_mode == "static" else 0)
        with torch.no_grad():
            ref, got = layer(x), d.forward(x)
        assert float((got - ref).norm() / ref.norm()) < 1e-6, (scheme, mode)


def test_export_precision_is_one_rule_for_every_format(seg):
    qm, _ = quantize(seg, "int8-weight")
    assert q.scheme_of(seg) is None and q.scheme_of(qm) == "int8-weight"
    assert [q.export_precision(seg, f) for f in ("onnx", "openvino", "coreml", "torch", "native")] == \
        ["fp32", "fp32", "fp16", "fp32", "fp32"]
    assert all(q.export_precision(qm, f) == "int8-weight" for f in ("onnx", "coreml", "torch", "native"))
    with pytest.raises(ConfigError, match="torch export precision 'fp16' is not supported"):
        q.export_precision(seg, "torch", "fp16")
    with pytest.raises(ConfigError, match="precision 'fp8' needs a quantized model"):
        q.export_precision(seg, "coreml", "fp8")
    with pytest.raises(ConfigError, match="unknown precision 'int4'; expected 'fp32' or 'fp16'"):
        q.export_precision(seg, "onnx", "int4")


@pytest.mark.parametrize("make, err, match", [
    (lambda: Int8(activations="sometimes"), ConfigError, r"Int8\(activations='sometimes'\) is not supported; expected "
                                                         r"Dynamic\(\) or Static"),
    (lambda: Static(estimator="kl"), ConfigError, "estimator='kl' is not supported; expected one of 'minmax'"),
    (lambda: Static(percentile=10), ConfigError, r"percentile=10 must be in \(50, 100\]"),
    (lambda: Static(percentile=10**400), ConfigError, r"percentile=1000.* must be in \(50, 100\]"),
    (lambda: Fp8(smoothquant_alpha=2.0), ConfigError, r"smoothquant_alpha=2.0 must be a number in \[0, 1\]"),
    (lambda: Int8WeightOnly("per_row"), ConfigError, "weight_granularity='per_row' is not supported"),
    (lambda: Mixed(layers={WQ: "int3"}), ConfigError, r"unknown per-layer scheme 'int3' for layer"),
    (lambda: Mixed(layers={WQ: 8}), ConfigError, r"per-layer config for layer .* is a int; expected Int8WeightOnly"),
    (lambda: Mixed(budget="sqnr_db>=20", layers={WQ: Fp16()}), ConfigError, "leave layers= empty"),
    (lambda: Mixed(budget="sqnr_db>=20", default="float"), ConfigError, "needs a default config"),
    (lambda: Calibration(CALIB, num_samples=0), ConfigError, "calibration_size=0 must be an integer >= 1"),
    (lambda: QuantRecipe("int8", "int8", calibration_precision="fp16"), ConfigError,
     "calibration_precision='fp16' is not supported; expected one of 'auto', 'fp32', 'bf16'"),
    (lambda: Calibration(CALIB, input_size=(128,)), ConfigError, r"input_size must be \(H, W\) positive integers"),
])
def test_bad_config_objects(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_bad_requests(seg):
    with pytest.raises(ConfigError, match="quantize scheme is a int; expected a scheme name, a QuantRecipe, "
                                          r"Int8WeightOnly\(\)"):
        quantize(seg, 8)
    with pytest.raises(ConfigError, match=r"option\(s\) \['activation_mode'\] set what the config object already "
                                          r"says.*Int8\(activations=Static\('mse'\)\)"):
        quantize(seg, Int8(), activation_mode="static")
    with pytest.raises(ConfigError, match=r"option\(s\) \[.budget.\]"):
        quantize(seg, Mixed(), budget="sqnr_db>=20")
    with pytest.raises(QuantizationError, match="'backbone.nope' is not a quantizable layer; expected the module name"):
        apply(seg, {"backbone.nope": Int8()})
    with pytest.raises(ConfigError, match="apply expects a mapping of layer names to configs, got list"):
        apply(seg, [WQ])
    with pytest.raises(CalibrationError, match="needs calibration data to set the input ranges of 1 layers"):
        apply(seg, {WQ: Int8(Static())})
    with pytest.raises(ConfigError, match=r"share that norm, so expected one alpha"):
        apply(seg, {WQ: Int8(smoothquant_alpha=0.5), "backbone.blocks.0.attn.wk": Int8(smoothquant_alpha=0.8)},
              Calibration(CALIB, input_size=INPUT))
    with pytest.raises(QuantizationError, match="no layer is left to quantize"):
        apply(seg, {WQ: "float"})


@pytest.mark.parametrize("asked, device, flags, expected", [
    ("auto", "cpu", "fpu avx512f avx512_bf16", ("bf16", "auto: this CPU has avx512_bf16")),
    ("auto", "cpu", "fpu amx_bf16 amx_tile avx512_bf16", ("bf16", "auto: this CPU has amx_bf16 and avx512_bf16")),
    ("auto", "cpu", "fpu avx512f avx512_vnni", ("fp32", "auto: this CPU has no native bf16 (neither avx512_bf16 "
                                                        "nor amx_bf16)")),
    ("auto", "cpu", None, ("fp32", "auto: no CPU flags to read here")),
    ("auto", "meta", "avx512_bf16", ("fp32", "auto: fp32 on meta")),
    ("bf16", "cpu", "fpu", ("bf16", "asked for")),
    ("fp32", "cpu", "avx512_bf16", ("fp32", "asked for")),
])
def test_calibration_precision_follows_the_cpu(asked, device, flags, expected):
    from sapiens2_edge.quantization.calibration import calibration_precision

    cpuinfo = "processor\t: 0\n" + (f"flags\t\t: {flags}\n" if flags is not None else "")
    assert calibration_precision(asked, device, cpuinfo) == expected
