"""The native C++ engine against the torch reference: every task, the 4K tokenizer, MHA-only and
GQA backbones, both RoPE modes, fp16-stored and int8-weight models, and thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import sapiens2_edge as s2e
from sapiens2_edge.errors import ConfigError, InputSizeError, InvalidTensorError
from sapiens2_edge.exporters import export, read_manifest, verification_inputs
from sapiens2_edge.models.backbone import RopeEmbedding
from sapiens2_edge.runtime.native_backend import NativeBackend, import_native, onednn_status
from tests.fixtures.compare import rel_l2, torch_out
from tests.fixtures.tiny import INPUT_4K, TINY, TINY_4K, TINY_MHA, input_size, tiny_model

native = import_native()
FP32_TOL = 1e-4




def check_against_torch(model, root, size, tol=FP32_TOL, batch=2):
    x = verification_inputs(size, batch=batch, seed=3)
    got = NativeBackend(root)(x)
    ref = torch_out(model, x)
    assert len(got) == len(ref)
    for r, g in zip(ref, got, strict=True):
        assert g.shape == r.shape and g.dtype == np.float32
        assert rel_l2(r, g) <= tol, (rel_l2(r, g), r.shape)
    return ref, got


CASES = [(task, TINY) for task in (None, "pose", "seg", "normal", "albedo", "pointmap")]
CASES += [("seg", TINY_4K), (None, TINY_4K), ("pose", TINY_MHA)]


@pytest.mark.parametrize("task,arch", CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_fp32_matches_torch(task, arch, tmp_path):
    model = tiny_model(task, arch, seed=5)
    size = INPUT_4K if arch.is_4k else input_size(task)
    root = export(model, tmp_path / "a", format="native", input_size=size, max_batch=2)
    m = read_manifest(root)
    assert m.format == "native" and set(m.files) == {"weights.safetensors", "reference.npz"}
    assert m.fidelity["rel_l2"] <= FP32_TOL
    check_against_torch(model, root, size)


def test_rope_tables_bit_exact():
    for d in (16, 64, 80):
        rope = RopeEmbedding(d)
        periods = rope.periods.float().numpy()
        for hp, wp in ((1, 1), (8, 6), (64, 48), (37, 101), (128, 96)):
            for mode in ("bf16", "fp32"):
                rope.mode = mode
                sin, cos = rope.tables(hp, wp)
                got_sin, got_cos = native.rope_tables(periods, hp, wp, mode == "bf16")
                if mode == "bf16":
                    np.testing.assert_array_equal(got_sin, sin.numpy())
                    np.testing.assert_array_equal(got_cos, cos.numpy())
                else:  # float32 sin/cos may differ in the last ulp between libm and torch
                    np.testing.assert_allclose(got_sin, sin.numpy(), rtol=0, atol=2e-6)
                    np.testing.assert_allclose(got_cos, cos.numpy(), rtol=0, atol=2e-6)


def test_fp32_rope_mode(tmp_path):
    model = tiny_model("seg", seed=6).set_rope_mode("fp32")
    root = export(model, tmp_path / "a", format="native", input_size=input_size("seg"))
    assert NativeBackend(root).engine.rope_mode == "fp32"
    check_against_torch(model, root, input_size("seg"))


def test_fp16_storage(tmp_path):
    model = tiny_model("pose", seed=7)
    root = export(model, tmp_path / "a", format="native", precision="fp16", input_size=input_size("pose"))
    assert NativeBackend(root).engine.weight_format == "float16"
    ref16 = tiny_model("pose", seed=7)  # the torch model with the same fp16-rounded weights
    with torch.no_grad():
        for p in ref16.parameters():
            p.copy_(p.half().float())
    check_against_torch(ref16, root, input_size("pose"))


@pytest.mark.parametrize("scheme,fmt", [("int8-weight", "int8-weight"), ("fp16", "float16")])
def test_weight_only_quantized(scheme, fmt, tmp_path):
    model = tiny_model("seg", seed=8)
    qmodel, _ = s2e.quantize(model, scheme=scheme, progress=False)
    root = export(qmodel, tmp_path / "a", format="native", input_size=input_size("seg"))
    backend = NativeBackend(root)
    assert backend.engine.weight_format == fmt
    x = verification_inputs(input_size("seg"), batch=2, seed=4)
    got = backend(x)[0]
    torch_q, torch_f = torch_out(qmodel, x)[0], torch_out(model, x)[0]
    # Same dequantized fp32 arithmetic as the torch quantized model ...
    assert rel_l2(torch_q, got) <= FP32_TOL
    # ... hence as close to the float model as the torch quantized model is.
    err_native, err_torch = rel_l2(torch_f, got), rel_l2(torch_f, torch_q)
    assert err_native <= 1.05 * err_torch + 1e-6, (err_native, err_torch)


def test_int8_weight_file_holds_int8(tmp_path):
    model = tiny_model("pose", seed=9)
    qmodel, _ = s2e.quantize(model, scheme="int8-weight", progress=False)
    root = export(qmodel, tmp_path / "a", format="native", input_size=input_size("pose"))
    tensors, meta = native.read_safetensors_header(str(root / "weights.safetensors"))
    assert tensors["backbone.blocks.0.attn.wq.weight"] == ("I8", [64, 64])
    assert tensors["backbone.blocks.0.attn.wq.weight_scale"] == ("F32", [64])
    assert tensors["decode_head.conv_pose.weight"][0] == "F32"  # heads stay float
    assert "int8-weight" in meta["sapiens2_edge.recipe"]


def test_fp8_activation_models_refused(tmp_path):
    model = tiny_model("seg", seed=10)
    qmodel, _ = s2e.quantize(model, scheme="fp8", progress=False)
    with pytest.raises(ConfigError, match=r"the native engine runs float, fp16, int8-weight and int8 \(W8A8.* uses "
                                          r"fp8 \(fp8/dynamic\)"):
        export(qmodel, tmp_path / "a", format="native", input_size=input_size("seg"))
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("scheme", ["fp32", "int8"])
def test_thread_safety(scheme, tmp_path, monkeypatch):
    """One engine, several threads at once: every result equals the serial one. The serial calls run in
    a thread of their own too: a new thread starts with the process's OpenMP thread count (the tests'
    main thread runs one, see conftest.py), and oneDNN's AVX2 kernels split their sums by it. int8 (W8A8):
    the threads share the int8 weights the engine packed once (batches of 1 and 2: the row count they were
    packed for and another)."""
    model = tiny_model("seg", seed=11)
    if scheme == "int8":
        if not onednn_status()[0]:
            pytest.skip("no oneDNN: its wheel (the [onednn] extra, in [all]) exists for Linux x86-64 only")
        calib = [torch.from_numpy(verification_inputs(input_size("seg"), batch=1, seed=s)) for s in range(4)]
        model, _ = s2e.quantize(model, "int8", calibration=calib, input_size=input_size("seg"), progress=False)
        monkeypatch.delenv("S2E_NATIVE_INT8_WEIGHTS", raising=False)
    root = export(model, tmp_path / "a", format="native", input_size=input_size("seg"), verify=False)
    backend = NativeBackend(root)
    if scheme == "int8" and backend.engine.int8_weights_mode != "packed":
        pytest.skip("this CPU has no VNNI / AMX int8 kernels: nothing is packed to share")
    inputs = [verification_inputs(input_size("seg"), batch=1 + i % 2, seed=20 + i) for i in range(6)]
    serial: list[np.ndarray] = []
    one = threading.Thread(target=lambda: serial.extend(backend(x)[0] for x in inputs))
    one.start()
    one.join()
    assert len(serial) == len(inputs)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i):
        try:
            for _ in range(2):
                results[i] = backend(inputs[i])[0]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, want in enumerate(serial):
        np.testing.assert_allclose(results[i], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task,arch", [("seg", TINY), ("normal", TINY), ("pointmap", TINY), ("seg", TINY_4K)],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_buffers_kept_between_runs_change_nothing(task, arch, tmp_path):
    """The engine keeps a run's buffers for the next: every output of a sequence of runs (batch sizes up
    and down, inputs repeated) is bit for bit what a fresh engine gives for that input alone."""
    model = tiny_model(task, arch=arch, seed=13)
    size = INPUT_4K if arch is TINY_4K else input_size(task)
    root = export(model, tmp_path / "a", format="native", input_size=size, max_batch=2, verify=False)
    two, one = verification_inputs(size, batch=2, seed=31), verification_inputs(size, batch=1, seed=32)
    kept = NativeBackend(root)
    for x in (two, one, two, one):
        for got, want in zip(kept(x), NativeBackend(root)(x), strict=True):
            assert np.array_equal(got, want)


@pytest.fixture(scope="module")
def pointmap_engine(tmp_path_factory):
    model = tiny_model("pointmap", seed=12)
    root = export(model, tmp_path_factory.mktemp("p") / "a", format="native", input_size=input_size("pointmap"),
                  max_batch=2, verify=False)
    return native.Engine(str(root))


def test_engine_properties(pointmap_engine):
    e = pointmap_engine
    assert (e.task, e.output_names, e.input_size, e.max_batch) == ("pointmap", ["pointmap", "scale"], (256, 192), 2)
    assert (e.embed_dim, e.input_multiple, e.rope_mode, e.weight_format) == (64, 16, "bf16", "float32")


def test_bad_inputs(pointmap_engine):
    e = pointmap_engine
    with pytest.raises(InvalidTensorError, match=r"expected input of shape \(B,3,H,W\), got \(1, 4, 256, 192\)"):
        e.run(np.zeros((1, 4, 256, 192), np.float32))
    with pytest.raises(InputSizeError, match="scale branch was built for 256x192 inputs, got 128x96"):
        e.run(np.zeros((1, 3, 128, 96), np.float32))
    with pytest.raises(InputSizeError, match="not a positive multiple of 16"):
        e.run(np.zeros((1, 3, 250, 192), np.float32))
    with pytest.raises(InputSizeError, match="batch of 3 is larger than the 2"):
        e.run(np.zeros((3, 3, 256, 192), np.float32))
    with pytest.raises(InputSizeError, match="batch is empty"):
        e.run(np.zeros((0, 3, 256, 192), np.float32))
    x = np.zeros((1, 3, 256, 192), np.float32)
    x[0, 1, 5, 5] = np.nan
    with pytest.raises(InvalidTensorError, match="NaN"):
        e.run(x)
    out = e.run(np.zeros((1, 3, 256, 192), np.float64))  # other float dtypes are converted
    assert out[0].shape == (1, 3, 256, 192) and out[1].shape == (1, 1)
