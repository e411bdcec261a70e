"""An export's checks share their torch forwards: each (model, form, input) runs once per export, and
nothing is remembered outside one."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import sapiens2_edge as s2e
from sapiens2_edge.artifact import verification_inputs
from sapiens2_edge.exporters.fidelity import shared_forwards, torch_outputs
from sapiens2_edge.runtime import open_artifact
from tests.fixtures.tiny import INPUT, tiny_model

G = torch.Generator().manual_seed(11)
CALIB = [torch.randn(2, 3, *INPUT, generator=G) for _ in range(2)]


def counted(model) -> list[str]:
    """The digests of the inputs ``model`` is run on eagerly, in order (a forward pre-hook; the export's
    own tracing passes fake tensors, which are not runs)."""
    seen: list[str] = []

    def note(_module, args):
        if type(args[0]) is torch.Tensor and not torch.compiler.is_compiling():
            seen.append(hashlib.blake2b(args[0].detach().numpy().tobytes(), digest_size=8).hexdigest())
    model.register_forward_pre_hook(note)
    return seen


def test_outside_an_export_every_call_runs_the_model():
    model = tiny_model("seg")
    runs = counted(model)
    x = verification_inputs(INPUT, batch=1)
    a, b = torch_outputs(model, x), torch_outputs(model, x)
    assert len(runs) == 2 and np.array_equal(a[0], b[0]) and a[0].flags.writeable


def test_inside_one_each_model_form_and_input_runs_once():
    model, other = tiny_model("seg"), tiny_model("seg", seed=1)
    runs, other_runs = counted(model), counted(other)
    x, y = verification_inputs(INPUT, batch=1, seed=0), verification_inputs(INPUT, batch=1, seed=1)
    with shared_forwards():
        first = torch_outputs(model, x)
        again = torch_outputs(model, x.copy())  # the same values in another array
        assert again is first and len(runs) == 1
        assert not first[0].flags.writeable  # shared: nobody may write into it
        with pytest.raises(ValueError, match="read-only"):
            first[0][0, 0, 0, 0] = 1.0
        torch_outputs(model, y)
        torch_outputs(other, x)
        assert len(runs) == 2 and len(other_runs) == 1
        torch_outputs(model, x, remember=False)  # asked not to share: runs, and is not kept
        assert len(runs) == 3 and torch_outputs(model, x) is first
        model.set_rope_mode("fp32" if model.rope_mode != "fp32" else "bf16")  # another form of the model
        moved = torch_outputs(model, x)
        assert len(runs) == 4 and moved is not first
        model.decode_head.conv_layers[1] = torch.nn.Identity()  # an exporter's reference form swaps modules
        torch_outputs(model, x)
        assert len(runs) == 5
    torch_outputs(model, x)
    assert len(runs) == 6  # the block's outputs are let go with it


def test_a_quantized_export_runs_each_model_once_per_input(tmp_path):
    """An int8 ONNX export with its float model: the reference input is also the first fidelity input,
    so the QuantizedModel and the float model each run once per distinct input (before: the reference
    input twice, and OpenVINO's precision check a third time), and the manifest's numbers match a
    fresh computation."""
    float_model = tiny_model("seg")
    q, _ = s2e.quantize(float_model, "int8", calibration=CALIB, input_size=INPUT, activation_mode="static",
                        progress=False)
    q_runs, f_runs = counted(q), counted(float_model)
    root = s2e.export(q, tmp_path / "art", format="onnx", input_size=INPUT, max_batch=1, float_model=float_model)
    assert len(f_runs) == len(set(f_runs)) == 4  # the four fidelity inputs, the first also the reference
    assert len(q_runs) == len(set(q_runs)) and set(f_runs) <= set(q_runs)
    fid = json.loads((root / "manifest.json").read_text())["fidelity"]
    x = verification_inputs(INPUT, batch=1)
    fresh = torch_outputs(q, x)
    got = open_artifact(root, "onnxruntime")[1](x)
    rel = float(np.linalg.norm(got[0] - fresh[0]) / np.linalg.norm(fresh[0]))
    assert fid["rel_l2"] == pytest.approx(rel, rel=1e-5)
