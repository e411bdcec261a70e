"""The native engine's bf16 GEMMs (oneDNN): against an independent bf16 emulation of the same model in
torch, the bf16 artifact (weights stored in bfloat16, verified as the runtime will run it), the choice
of GEMM precision per machine, and the errors a user can hit.

The emulation rounds what the engine rounds (every backbone linear's and head convolution's input and
weight, attention's q, k, v and probabilities) and computes the products in float64 (convolutions in
float32): the engine is not bit-equal to it
(float32 accumulation order moves later bf16 roundings, which 18 random blocks amplify: two
emulations that differ only in accumulation order are 1e-3 apart), so the test bounds the engine's
distance to the float model by the emulation's own. The GEMMs themselves are checked to 1e-5 against
float64 products in the C++ tests (cpp/tests/test_onednn.cpp)."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import numpy as np
import pytest
import torch

import sapiens2_edge.models.backbone as backbone
from sapiens2_edge.errors import BackendUnavailableError, ConfigError
from sapiens2_edge.exporters import export, read_manifest, verification_inputs
from sapiens2_edge.runtime import native_backend
from sapiens2_edge.runtime.native_backend import NativeBackend, import_native, onednn_status, resolve_native_precision
from tests.fixtures.compare import rel_l2
from tests.fixtures.tiny import TINY, tiny_model

native = import_native()
USABLE, NATIVE_BF16, ONEDNN = onednn_status()
#: tokens above the engine's small-sequence attention (64): 10 x 8 patches + 9 prefix tokens
SIZE = (160, 128)
#: 26 x 24 patches + 9 prefix tokens = 633: the engine splits attention's query rows into blocks whose
#: scores fit a core's cache (384K floats: 621 rows here), so this size runs two blocks, the second partial
LONG = (416, 384)


def bf16_backend(root):
    """The engine with bf16 GEMMs where this machine has them; elsewhere checks the refusal and
    returns None (CI installs oneDNN; CPUs without AVX-512-BF16 or AMX exist among the machines)."""
    if USABLE and NATIVE_BF16:
        return NativeBackend(root, precision="bf16")
    want = "need oneDNN" if not USABLE else "this CPU has no native bf16"
    with pytest.raises(BackendUnavailableError, match=want):
        NativeBackend(root, precision="bf16")
    return None



def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).double()


@contextlib.contextmanager
def bf16_gemm_emulation(model):
    """``model`` computing its backbone linears and global attention as the engine's bf16 mode does."""
    sdpa = backbone.F.scaled_dot_product_attention

    def attention(q, k, v, enable_gqa=False, **kw):
        if q.shape[-2] <= 64:  # the engine's small-sequence attention stays float32
            return sdpa(q, k, v, enable_gqa=enable_gqa, **kw)
        if enable_gqa:
            g = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        scores = (_bf16(q) @ _bf16(k).transpose(-1, -2)).float() / q.shape[-1] ** 0.5
        return (_bf16(torch.softmax(scores, -1)) @ _bf16(v)).float()

    patched = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("backbone.")]
    for m in patched:
        m.forward = lambda x, m=m: (_bf16(x) @ _bf16(m.weight).T + m.bias.double()).float()
    convs = [m for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
             and not n.startswith("backbone.")]  # the head's; the patch embedding stays float32
    for m in convs:
        m.forward = lambda x, m=m: m._conv_forward(_bf16(x).float(), _bf16(m.weight).float(), m.bias) if isinstance(
            m, torch.nn.Conv2d) else torch.nn.functional.conv_transpose2d(
            _bf16(x).float(), _bf16(m.weight).float(), m.bias, m.stride, m.padding, m.output_padding, m.groups,
            m.dilation)
    patched += convs
    backbone.F.scaled_dot_product_attention = attention
    try:
        yield model
    finally:
        backbone.F.scaled_dot_product_attention = sdpa
        for m in patched:
            del m.forward


def outputs(model, x):
    with torch.inference_mode():
        out = model(torch.from_numpy(x))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def test_bf16_gemms_available_where_installed_and_native():
    """With the oneDNN wheel installed (the [onednn] extra) on a CPU with AVX-512-BF16 or AMX, bf16 GEMMs
    must be usable: an extension built without oneDNN's headers would otherwise pass unnoticed."""
    from pathlib import Path

    flags = next((set(line.split(":", 1)[1].split()) for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), set()) if Path("/proc/cpuinfo").exists() else set()
    if native_backend.onednn_library() and flags & {"avx512_bf16", "amx_bf16"}:
        assert USABLE and NATIVE_BF16, ONEDNN
        assert ONEDNN.startswith("oneDNN 3.")
    else:  # elsewhere the status says what there is, or why there is none
        assert ONEDNN.startswith("oneDNN 3.") if USABLE else ("oneDNN" in ONEDNN or "without oneDNN" in ONEDNN)


@pytest.mark.parametrize("task,size", [("seg", SIZE), ("pose", SIZE), ("seg", LONG), ("normal", SIZE),
                                       ("albedo", SIZE)])
def test_bf16_gemms_as_far_from_float_as_a_bf16_emulation(task, size, tmp_path):
    model = tiny_model(task, TINY, seed=5)
    root = export(model, tmp_path / "a", format="native", input_size=size, max_batch=2, verify=False)
    x = verification_inputs(size, batch=2, seed=3)
    ref = outputs(model, x)
    with bf16_gemm_emulation(model):
        emulated = outputs(model, x)
    fp32 = NativeBackend(root)(x)
    bf16 = bf16_backend(root)
    if bf16 is None:
        return
    assert bf16.engine.precision == "bf16" and "bf16 GEMMs on oneDNN" in bf16.describe()
    got = bf16(x)
    for r, e, f, g in zip(ref, emulated, fp32, got, strict=True):
        assert g.shape == r.shape and g.dtype == np.float32 and np.isfinite(g).all()
        assert rel_l2(r, f) <= 1e-4  # the float32 engine is unchanged
        assert 5e-3 < rel_l2(r, e) < 5e-2  # the emulation really is bf16 (and not broken)
        assert rel_l2(r, g) <= 1.25 * rel_l2(r, e), (rel_l2(r, g), rel_l2(r, e))
        assert rel_l2(e, g) <= 0.5 * rel_l2(r, e)  # nearer the emulation than the emulation is to float
    assert np.array_equal(bf16(x)[0], got[0])  # deterministic


def test_int8_weights_run_exactly_in_bf16(tmp_path):
    """int8 weights are bf16 numbers: the engine's bf16 run of an int8-weight model is as far from its
    float32 run as a float model's bf16 run is from its own (weights add no rounding)."""
    import sapiens2_edge as s2e

    model = tiny_model("seg", TINY, seed=6)
    q, _ = s2e.quantize(model, scheme="int8-weight", progress=False)
    qroot = export(q, tmp_path / "q", format="native", input_size=SIZE, verify=False)
    x = verification_inputs(SIZE, batch=1, seed=2)
    q32 = NativeBackend(qroot)(x)[0]
    assert NativeBackend(qroot).engine.weight_format == "int8-weight"
    assert rel_l2(outputs(q, x)[0], q32) <= 1e-4
    root = export(model, tmp_path / "f", format="native", input_size=SIZE, verify=False)
    q16, f16 = bf16_backend(qroot), bf16_backend(root)
    if q16 is None:
        return
    f32 = NativeBackend(root)(x)[0]
    assert rel_l2(q32, q16(x)[0]) <= 1.5 * rel_l2(f32, f16(x)[0])


def test_bf16_artifact_stores_bfloat16_and_verifies_as_it_runs(tmp_path):
    model = tiny_model("pose", TINY, seed=7)
    fp32 = export(model, tmp_path / "f", format="native", input_size=SIZE, verify=False)
    root = export(model, tmp_path / "b", format="native", precision="bf16", input_size=SIZE)
    m = read_manifest(root)
    assert m.precision == "bf16" and m.fidelity["rel_l2"] <= m.fidelity["tolerance"] == 5e-2
    tensors, _ = native.read_safetensors_header(str(root / "weights.safetensors"))
    assert tensors["backbone.blocks.0.attn.wq.weight"] == ("BF16", [64, 64])
    size, size32 = (r / "weights.safetensors" for r in (root, fp32))
    assert 0.49 < size.stat().st_size / size32.stat().st_size < 0.52
    precision, why = resolve_native_precision("bf16")
    backend = native_backend.open_runner(root, m, "cpu", 1)
    assert backend.precision == precision and backend.reason == why and why in backend.describe()
    assert precision == ("bf16" if USABLE and NATIVE_BF16 else "fp32")
    # the bf16-stored weights in float32 GEMMs: the same weights, float activations
    ref16 = tiny_model("pose", TINY, seed=7)
    with torch.no_grad():
        for p in ref16.parameters():
            p.copy_(p.bfloat16().float())
    x = verification_inputs(SIZE, batch=1, seed=4)
    got = NativeBackend(root)(x)
    for r, g in zip(outputs(ref16, x), got, strict=True):
        assert rel_l2(r, g) <= 1e-4


@pytest.mark.parametrize("status,want,says", [
    ((True, True, "oneDNN 3.2.0 (AVX-512 with AMX)"), "bf16", "bf16 GEMMs on oneDNN 3.2.0 (AVX-512 with AMX)"),
    ((True, False, "oneDNN 3.2.0 (AVX2)"), "fp32", "would emulate bf16 on this CPU"),
    ((False, False, "oneDNN not found (libdnnl.so.3: ...)"), "fp32", "pip install 'sapiens2-edge[onednn]'"),
])
def test_gemm_precision_per_machine(monkeypatch, status, want, says):
    monkeypatch.setattr(native_backend, "onednn_status", lambda: status)
    precision, why = resolve_native_precision("bf16")
    assert precision == want and says in why
    assert resolve_native_precision("fp32") == ("fp32", "fp32 artifact: GEMMs in fp32, as verified")
    assert resolve_native_precision("int8-weight")[0] == "fp32"


def test_unknown_precision_refused(tmp_path):
    root = export(tiny_model("seg", TINY, seed=1), tmp_path / "a", format="native", input_size=SIZE, verify=False)
    with pytest.raises(ConfigError, match=r"native precision 'int8' is not one the engine runs; expected one of"):
        NativeBackend(root, precision="int8")
    with pytest.raises(ConfigError, match=r"precision 'fp64' is not one the native engine runs; expected 'fp32' or 'bf16'"):
        native.Engine(str(root), "", "fp64")


@pytest.mark.parametrize("library,says", [
    ("missing/libdnnl.so.3", "oneDNN not found ({lib}: {lib}: cannot open shared object file"),
    ("libm.so.6", "libm.so.6 is not oneDNN 3.x (it has no dnnl_version)"),
])
def test_bf16_without_onednn_says_why(tmp_path, library, says):
    """oneDNN is opened once per process, so each case runs in a process of its own."""
    root = export(tiny_model("seg", TINY, seed=1), tmp_path / "a", format="native", input_size=SIZE, verify=False)
    lib = str(tmp_path / library) if "/" in library else library
    code = f"""
from sapiens2_edge.runtime import native_backend as nb
from sapiens2_edge.errors import BackendUnavailableError
nb.onednn_library = lambda: ""
try:
    nb.NativeBackend({str(root)!r}, precision="bf16")
except BackendUnavailableError as e:
    print("REFUSED", e)
print(nb.resolve_native_precision("bf16"))
"""
    env = {"S2E_ONEDNN_LIBRARY": lib, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REFUSED bf16 GEMMs on the native engine need oneDNN: " + says.format(lib=lib) in proc.stdout
    assert "('fp32', \"bf16 artifact: fp32 GEMMs on its bf16 weights (" in proc.stdout
    assert "pip install 'sapiens2-edge[onednn]' for bf16 GEMMs)" in proc.stdout
