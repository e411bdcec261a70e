"""The verification bound of artifacts with quantized activations: the precision's tolerance, or,
where an artifact exceeds it, the torch model's own movement under a 1e-6 input change (x2, capped),
measured on the model at hand; export faults stay far outside it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sapiens2_edge as s2e
import sapiens2_edge.artifact.reference as reference
from sapiens2_edge.artifact import compare, reference_inputs
from sapiens2_edge.errors import ExportError
from sapiens2_edge.exporters import fidelity
from sapiens2_edge.exporters.fidelity import quantized_bound, torch_outputs
from tests.fixtures.tiny import INPUT, tiny_model

G = torch.Generator().manual_seed(5)
CALIB = [torch.randn(2, 3, *INPUT, generator=G) for _ in range(2)]


@pytest.fixture(scope="module")
def static_int8():
    return s2e.quantize(tiny_model("seg"), "int8", calibration=CALIB, input_size=INPUT, activation_mode="static",
                        progress=False)[0]


def _outputs(model):
    x = reference_inputs(INPUT, 2)
    return x, torch_outputs(model, x)


def test_within_the_recipe_tolerance_nothing_is_measured(static_int8, monkeypatch):
    monkeypatch.setattr(fidelity, "rounding_sensitivity", lambda *a: pytest.fail("measured without need"))
    x, ref = _outputs(static_int8)
    assert quantized_bound(static_int8, x, ref, ["logits"], 5e-2, 4e-2) == (5e-2, {})


def test_beyond_it_the_bound_is_twice_the_models_own_rounding_movement(static_int8):
    x, ref = _outputs(static_int8)
    moved = compare(ref, torch_outputs(static_int8, (x * (1 + 1e-6)).astype(np.float32)), ["logits"])["rel_l2"]
    assert 1e-5 < moved < 0.1  # static int8 roundings flip under a 1e-6 change on this random model
    bound, record = quantized_bound(static_int8, x, ref, ["logits"], 1e-6, 0.5)
    assert bound == pytest.approx(2 * moved) and record["rounding_sensitivity"] == pytest.approx(moved)
    assert record["recipe_tolerance"] == 1e-6 and "1e-06 relative input change" in record["tolerance_from"]
    # never below the recipe's tolerance, never above the cap
    assert quantized_bound(static_int8, x, ref, ["logits"], 0.15, 0.5)[0] == 0.15
    assert quantized_bound(static_int8, x, ref, ["logits"], 0.15, 0.5)[0] >= 2 * moved


def test_the_allowance_is_capped(static_int8, monkeypatch):
    monkeypatch.setattr(fidelity, "rounding_sensitivity", lambda *a: 0.6)
    x, ref = _outputs(static_int8)
    assert quantized_bound(static_int8, x, ref, ["logits"], 5e-2, 0.9)[0] == fidelity.MAX_ROUNDING_BOUND


def test_weight_only_and_float_models_get_no_allowance():
    model = tiny_model("seg")
    w8, _ = s2e.quantize(model, "int8-weight", progress=False)
    for m in (model, w8):
        x, ref = _outputs(m)
        assert quantized_bound(m, x, ref, ["logits"], 1e-3, 0.3) == (1e-3, {})


def test_export_records_the_allowance_and_still_refuses_a_faulty_artifact(static_int8, tmp_path, monkeypatch):
    """With the int8 tolerance set below what this model's roundings allow, the export passes on the
    measured allowance and records it; an artifact 10 % off (a scale error) fails with the reason."""
    x, ref = _outputs(static_int8)
    moved = fidelity.rounding_sensitivity(static_int8, x, ref, ["logits"])
    monkeypatch.setitem(reference.TOLERANCE, "int8", moved / 100)
    root = s2e.export(static_int8, tmp_path / "ok", format="onnx", input_size=INPUT, max_batch=2)
    fid = json.loads((root / "manifest.json").read_text())["fidelity"]
    assert fid["rel_l2"] > moved / 100  # ONNX Runtime's roundings differ from torch's (measured 1.8e-3)
    assert fid["rounding_sensitivity"] == pytest.approx(moved, rel=1e-6) and fid["recipe_tolerance"] == moved / 100
    assert fid["tolerance"] == pytest.approx(2 * moved, rel=1e-6) and fid["rel_l2"] <= fid["tolerance"]

    import sapiens2_edge.exporters.onnx_export as onnx_export

    real = onnx_export.verifier

    def scaled(out_dir, files):
        run = real(out_dir, files)
        return lambda x: [np.asarray(o) * 1.1 for o in run(x)]
    monkeypatch.setattr(onnx_export, "verifier", scaled)
    with pytest.raises(ExportError, match=r"does not match torch: relative L2 0\.1.* > .*the torch model itself "
                                          r"moves by .* under a 1e-6 input change"):
        s2e.export(static_int8, tmp_path / "bad", format="onnx", input_size=INPUT, max_batch=2)
    assert not (tmp_path / "bad").exists()


def test_the_movement_is_measured_once_per_model_input_and_reference(static_int8, monkeypatch):
    x, ref = _outputs(static_int8)
    x = x * 0.5  # an input no other test measured
    ref = torch_outputs(static_int8, x)
    calls = []
    real = fidelity.torch_outputs
    monkeypatch.setattr(fidelity, "torch_outputs", lambda m, a, **kw: calls.append(1) or real(m, a, **kw))
    first = fidelity.rounding_sensitivity(static_int8, x, ref, ["logits"])
    assert fidelity.rounding_sensitivity(static_int8, x, ref, ["logits"]) == first and len(calls) == 1
    fidelity.rounding_sensitivity(static_int8, x, tuple(r + 1 for r in ref), ["logits"])  # another reference
    assert len(calls) == 2
