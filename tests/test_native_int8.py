"""int8 (W8A8) models on the native engine: int8 weights and activations on oneDNN's int8 GEMMs,
against the torch QuantizedModel (the same quantization of every activation row, exact int32
products) and the float model, static and dynamic activations, the 4K tokenizer, and the errors a
user can hit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sapiens2_edge as s2e
from sapiens2_edge.errors import ArtifactError, ConfigError
from sapiens2_edge.exporters import export, read_manifest, verification_inputs
from sapiens2_edge.exporters.native_export import KEY_ACTIVATIONS
from sapiens2_edge.models.arch import ArchSpec
from sapiens2_edge.models.checkpoint import write_tensors
from sapiens2_edge.models.model import build_model
from sapiens2_edge.runtime.native_backend import NativeBackend, import_native, onednn_status
from tests.fixtures.compare import rel_l2, torch_out
from tests.fixtures.tiny import INPUT_4K, TINY_4K, input_size, tiny_model

native = import_native()
USABLE = onednn_status()[0]
needs_onednn = pytest.mark.skipif(not USABLE, reason="no oneDNN: its wheel (the [onednn] extra, in [all]) exists for Linux x86-64 only")
SIZE = input_size("seg")
#: The engine and torch compute each activation to within float32 rounding of the previous layers
#: (their accumulation orders differ, and the engine has its own exp), so a value next to a rounding
#: boundary of x / scale can land on the other integer, and through 18 random blocks with attention a
#: flip spreads: measured 1e-6..5e-3 from the torch model on these fixtures. A wrong scale, prefix
#: rule or bias moves the output by 0.1 and more (the prefix test), and the token-by-token test on a
#: short backbone shows the arithmetic itself agrees to float32 rounding.
DEEP_TOL = 1e-2




def quantized(mode: str, model=None, size=SIZE, **options):
    model = model or tiny_model("seg", seed=11)
    calib = [torch.from_numpy(verification_inputs(size, batch=1, seed=s)) for s in range(20, 28)]
    qmodel, _ = s2e.quantize(model, "int8", calibration=calib, input_size=size, activation_mode=mode,
                             progress=False, **options)
    return model, qmodel


@needs_onednn
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_w8a8_matches_the_torch_quantized_model(mode, tmp_path):
    model, qmodel = quantized(mode)
    root = export(qmodel, tmp_path / "a", format="native", input_size=SIZE, max_batch=2)
    m = read_manifest(root)
    assert m.precision == "int8" and m.fidelity["rel_l2"] <= m.fidelity["tolerance"]
    backend = NativeBackend(root)
    assert backend.engine.weight_format == "int8"
    x = verification_inputs(SIZE, batch=2, seed=4)
    got = backend(x)[0]
    torch_q, torch_f = torch_out(qmodel, x)[0], torch_out(model, x)[0]
    assert rel_l2(torch_q, got) <= DEEP_TOL, rel_l2(torch_q, got)
    err_native, err_torch = rel_l2(torch_f, got), rel_l2(torch_f, torch_q)
    assert err_torch > 1e-3  # activations really are int8: the float model is out of reach
    assert err_native <= 1.05 * err_torch, (err_native, err_torch)


@needs_onednn
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_w8a8_on_a_short_backbone_agrees_token_by_token(mode, tmp_path):
    """Two blocks, no head: each output token is one token's path through the model, so a rounding
    flip (an activation next to a rounding boundary, moved across it by float32 accumulation order or
    the engine's exp) shows as one odd token, while a wrong scale, prefix rule or bias changes them
    all. Nearly every token must agree to float32 rounding."""
    model = build_model(ArchSpec(64, 2, 4, (4, 2), 256, name="micro"), head=None, seed=0)
    _, qmodel = quantized(mode, model=model)
    root = export(qmodel, tmp_path / "a", format="native", input_size=SIZE, max_batch=4, verify=False)
    x = verification_inputs(SIZE, batch=4, seed=6)
    ref, got = torch_out(qmodel, x)[0], NativeBackend(root)(x)[0]  # (B, C, hp, wp)
    per_token = np.abs(ref - got).max(axis=1) / np.abs(ref).max()
    assert (per_token > 1e-5).mean() <= 0.03, np.sort(per_token.ravel())[-10:]


@needs_onednn
def test_w8a8_file_says_how_each_layer_quantizes_its_input(tmp_path):
    _, qmodel = quantized("static")
    root = export(qmodel, tmp_path / "a", format="native", input_size=SIZE, verify=False)
    tensors, meta = native.read_safetensors_header(str(root / "weights.safetensors"))
    acts = json.loads(meta[KEY_ACTIVATIONS])
    wq = "backbone.blocks.0.attn.wq"
    assert acts[wq] == {"dtype": "int8", "mode": "static", "prefix_tokens": qmodel.recipe.prefix_tokens}
    assert len(acts) == 6 * qmodel.arch.depth
    assert tensors[wq + ".weight"][0] == "I8" and tensors[wq + ".input_scale"] == ("F32", [1])


@needs_onednn
def test_w8a8_prefix_tokens_keep_their_own_scale(tmp_path):
    """With no prefix tokens the CLS and storage tokens take the static scale too: the engine follows
    the file, so it must then match a torch model quantized that way and not the default one."""
    model, q_default = quantized("static")
    _, q_none = quantized("static", model=model, prefix_tokens=0)
    root = export(q_none, tmp_path / "a", format="native", input_size=SIZE, verify=False)
    x = verification_inputs(SIZE, batch=1, seed=5)
    got = NativeBackend(root)(x)[0]
    near, far = rel_l2(torch_out(q_none, x)[0], got), rel_l2(torch_out(q_default, x)[0], got)
    assert near <= DEEP_TOL and far > 0.1, (near, far)


@needs_onednn
def test_w8a8_4k_tokenizer(tmp_path):
    model = tiny_model("seg", TINY_4K, seed=12)
    _, qmodel = quantized("static", model=model, size=INPUT_4K, quantize_tokenizer=True)
    root = export(qmodel, tmp_path / "a", format="native", input_size=INPUT_4K)
    x = verification_inputs(INPUT_4K, batch=1, seed=6)
    assert rel_l2(torch_out(qmodel, x)[0], NativeBackend(root)(x)[0]) <= DEEP_TOL


def test_w8a8_checkpoint_without_the_engine_metadata_is_refused(tmp_path):
    from sapiens2_edge.quantization.serialize import save_quantized

    _, qmodel = quantized("static")
    path = save_quantized(qmodel, tmp_path / "w8a8.safetensors")
    n = 6 * qmodel.arch.depth
    with pytest.raises(ConfigError, match=f"the recipe has {n} int8 \\(W8A8\\) layers but "
                                          f"sapiens2_edge.native_activations describes 0; re-export"):
        native.Engine(str(path))


@needs_onednn
@pytest.mark.parametrize("change, error, message", [
    (lambda a: a["backbone.blocks.0.attn.wq"].update(dtype="fp8"), ConfigError,
     "quantizes its activations to 'fp8'; the native engine quantizes them to int8 only"),
    (lambda a: a["backbone.blocks.0.attn.wq"].update(mode="per-channel"), ArtifactError,
     "mode is 'per-channel'; expected 'static' or 'dynamic'"),
    (lambda a: a.update({"backbone.blocks.0.attn.nope": a.pop("backbone.blocks.0.attn.wq")}), ArtifactError,
     "native_activations names 1 layer\\(s\\) this model does not have"),
])
def test_bad_activation_metadata_is_refused(tmp_path, change, error, message):
    from safetensors.torch import load_file

    _, qmodel = quantized("dynamic")
    root = export(qmodel, tmp_path / "a", format="native", input_size=SIZE, verify=False)
    weights = root / "weights.safetensors"
    _, meta = native.read_safetensors_header(str(weights))
    acts = json.loads(meta[KEY_ACTIVATIONS])
    change(acts)
    meta[KEY_ACTIVATIONS] = json.dumps(acts)
    bad = tmp_path / "bad.safetensors"
    write_tensors(load_file(str(weights)), bad, metadata=meta)
    with pytest.raises(error, match=message):
        native.Engine(str(bad))


@needs_onednn
def test_float_parts_in_bf16_where_verified(tmp_path):
    from sapiens2_edge.runtime import open_artifact, verify_artifact

    model, qmodel = quantized("static")
    root = export(qmodel, tmp_path / "a", format="native", input_size=SIZE, max_batch=2, float_model=model)
    checks = read_manifest(root).options["float_precision"]
    assert checks["f32"]["passed"] and checks["f32"]["against"] == "torch QuantizedModel"
    _, runner, _ = open_artifact(root, "native", "cpu")
    if onednn_status()[1]:  # this CPU computes bf16 natively: checked against the float model
        assert checks["bf16"]["against"] == "float model"
        assert checks["bf16"]["rel_l2"] <= checks["bf16"]["tolerance"]
        assert runner.precision == "bf16" and "float parts in bf16" in runner.describe()
        x = verification_inputs(SIZE, batch=2, seed=4)
        err_bf16 = rel_l2(torch_out(model, x)[0], runner(x)[0])
        err_f32 = rel_l2(torch_out(model, x)[0], runner.as_verified()(x)[0])
        assert err_bf16 <= 1.2 * err_f32, (err_bf16, err_f32)  # no further from the float model
    else:
        assert "not_checked" in checks["bf16"] and runner.precision == "fp32"
    assert runner.as_verified().precision == "fp32"
    assert verify_artifact(root)["passed"]  # the stored reference is checked in fp32, as exported


@pytest.mark.parametrize("options, status, want, says", [
    ({"float_precision": {"bf16": {"passed": True, "against": "float model"}}}, (True, True, "oneDNN X"), "bf16",
     "float parts in bf16 (verified at export against the float model)"),
    ({"float_precision": {"bf16": {"passed": False, "not_checked": "no bf16"}}}, (True, True, "oneDNN X"), "fp32",
     "its export did not verify bf16"),
    ({"float_precision": {"bf16": {"passed": True}}}, (True, False, "oneDNN X"), "fp32", "would emulate bf16"),
    ({}, (False, False, "oneDNN not found"), "fp32", "its export did not verify bf16"),
])
def test_int8_float_precision_per_machine(monkeypatch, options, status, want, says):
    from sapiens2_edge.runtime import native_backend

    monkeypatch.setattr(native_backend, "onednn_status", lambda: status)
    precision, why = native_backend.resolve_native_precision("int8", options)
    assert precision == want and says in why, why
