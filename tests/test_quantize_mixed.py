"""Budget parsing, per-layer sensitivity and the budget-driven mixed search, held-out evaluation,
and the quantize CLI (small all-MHA tiny model to keep the search quick)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sapiens2_edge as s2e
from sapiens2_edge.cli import app
from sapiens2_edge.errors import ConfigError, QuantizationError
from sapiens2_edge.quantization.evaluate import as_batches, evaluate, run_outputs
from sapiens2_edge.quantization.sensitivity import layer_sensitivity, parse_budget
from tests.fixtures.tiny import INPUT, TINY_MHA, save, tiny_model

CALIB = [torch.randn(2, 3, *INPUT, generator=torch.Generator().manual_seed(i)) for i in range(2)]
# The search runs over blocks 0-2 only (18 linears) to keep the test quick; the rest stays float.
ONLY_FIRST_BLOCKS = {"exclude": ("backbone.blocks.[3-9].*", "backbone.blocks.1[0-9].*"), "input_size": INPUT}


@pytest.fixture(scope="module")
def model():
    return tiny_model("seg", arch=TINY_MHA, seed=4)


def test_parse_budget():
    cs = parse_budget("seg_agreement>=0.995, size<=0.3", "seg")
    assert [(c.metric, c.op, c.value) for c in cs] == [("seg_agreement", ">=", 0.995), ("size", "<=", 0.3)]
    assert cs[0].ok(0.996) and not cs[0].ok(0.99) and cs[1].ok(0.3)
    with pytest.raises(ConfigError, match="unknown budget metric 'pose_mean_px' for a seg model"):
        parse_budget("pose_mean_px<=0.5", "seg")
    with pytest.raises(ConfigError, match="cannot read budget 'agreement=1'"):
        parse_budget("agreement=1", "seg")
    with pytest.raises(ConfigError, match="budget is empty"):
        parse_budget(" , ", "seg")


def test_sensitivity_swaps_one_layer_and_restores(model):
    batches = as_batches(CALIB, "seg", INPUT, 4)
    ref = run_outputs(model, batches)
    layers = ["backbone.blocks.0.ffn.w3", "backbone.blocks.5.attn.wq"]
    sens = layer_sensitivity(model, batches, ref, "int8", layers)
    assert set(sens) == set(layers)
    for fid in sens.values():
        assert 0 < fid["rel_l2"] < 0.1 and fid["sqnr_db"] > 20
    # the float model itself is untouched
    np.testing.assert_array_equal(run_outputs(model, batches)[0], ref[0])


def test_mixed_search_meets_budget_with_fewest_float_layers(model):
    full, _ = s2e.quantize(model, "int8", calibration=CALIB, **ONLY_FIRST_BLOCKS)
    assert len(full.layer_schemes) == 18
    full_fid = evaluate(model, full, CALIB, input_size=INPUT)
    target = (full_fid["sqnr_db"] + 6.0)  # unreachable with every layer in int8
    q, rep = s2e.quantize(model, "mixed", calibration=CALIB, budget=f"sqnr_db>={target:.2f}", **ONLY_FIRST_BLOCKS)
    kept = rep.recipe["search"]["kept_at_fallback"]
    assert 0 < len(kept) < 18
    assert rep.fidelity["sqnr_db"] >= target
    # independent re-measurement of the returned model
    assert evaluate(model, q, CALIB, input_size=INPUT)["sqnr_db"] >= target - 1e-6
    assert set(q.layer_schemes.values()) == {"int8"} and not set(kept) & set(q.layer_schemes)
    # one float layer fewer would miss the budget (the search returned the smallest k it verified)
    k = len(kept)
    assert k - 1 in rep.recipe["search"]["evaluated_k"] or k == 0
    assert rep.fidelity["size"] < 1.0


def test_impossible_budgets_say_why(model):
    with pytest.raises(QuantizationError, match=r"no assignment meets 'sqnr_db>=30,size<=0.05'.*best reachable size"):
        s2e.quantize(model, "mixed", calibration=CALIB, budget="sqnr_db>=30,size<=0.05", **ONLY_FIRST_BLOCKS)
    with pytest.raises(QuantizationError, match=r"with any layer quantized to int8.*relax the budget"):
        s2e.quantize(model, "mixed", calibration=CALIB, budget="sqnr_db>=200", **ONLY_FIRST_BLOCKS)
    with pytest.raises(ConfigError, match="needs scheme='mixed'"):
        s2e.quantize(model, "int8", calibration=CALIB, budget="sqnr_db>=20")


def test_quantize_cli_writes_checkpoint_and_report(tmp_path):
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(6):
        cv2.imwrite(str(calib / f"{i}.png"), rng.integers(0, 256, (140, 100, 3), dtype=np.uint8))
    ckpt = save(tiny_model("seg"), tmp_path / "seg.safetensors")
    res = CliRunner().invoke(app, ["quantize", str(ckpt), "--scheme", "int8-weight", "--calib", str(calib),
                                   "--output", str(tmp_path / "out"), "--calib-size", "4", "--eval-samples", "2",
                                   "--input-size", "128x96", "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "seg_agreement (held-out)" in res.output and "2 images of" in res.output
    out = tmp_path / "out" / "seg_int8-weight.safetensors"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["scheme"] == "int8-weight" and report["fidelity"]["samples"] == 2
    assert report["size_after_bytes"] < 0.4 * report["size_before_bytes"]
    from sapiens2_edge.quantization.serialize import read_report

    assert read_report(out)["fidelity"]["seg_agreement"] == report["fidelity"]["seg_agreement"]
    assert s2e.load_model(out).scheme == "int8-weight"
    bad = CliRunner().invoke(app, ["quantize", str(ckpt), "--scheme", "int4", "--calib", str(calib), "-o",
                                   str(tmp_path / "x"), "--input-size", "128x96"])
    assert bad.exit_code == 2 and "int4" in bad.output
