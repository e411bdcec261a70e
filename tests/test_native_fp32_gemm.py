"""The native engine's float32 GEMMs on oneDNN (where it is installed) and on OpenBLAS: both reproduce
the torch float model, oneDNN's stay strict fp32 even when its environment asks for bf16 math, the
engine says which library ran, and a bad choice is refused with a message."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from sapiens2_edge.errors import ConfigError
from sapiens2_edge.exporters import export, verification_inputs
from sapiens2_edge.runtime.native_backend import NativeBackend, onednn_status
from tests.fixtures.compare import rel_l2
from tests.fixtures.tiny import TINY, tiny_model

USABLE = onednn_status()[0]
#: 10 x 8 patches + 9 prefix tokens: above the engine's small-sequence attention (64), so attention
#: runs on the GEMM library too
SIZE = (160, 128)
FP32_TOL = 1e-4  # float32 accumulation order only; bf16 rounding of any operand gives ~1e-2 here



@pytest.fixture(scope="module")
def case(tmp_path_factory):
    model = tiny_model("seg", TINY, seed=2)
    root = export(model, tmp_path_factory.mktemp("fp32") / "a", format="native", input_size=SIZE, verify=False)
    x = verification_inputs(SIZE, batch=1, seed=6)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    return root, x, ref


def test_openblas_matches_torch_and_says_so(case, monkeypatch):
    root, x, ref = case
    monkeypatch.setenv("S2E_NATIVE_FP32_GEMM", "openblas")
    b = NativeBackend(root)
    assert b.engine.fp32_gemm == "OpenBLAS" and "OpenBLAS fp32 GEMMs" in b.describe()
    assert rel_l2(ref, b(x)[0]) <= FP32_TOL


def test_onednn_is_the_default_where_installed_and_matches_torch(case, monkeypatch):
    root, x, ref = case
    monkeypatch.delenv("S2E_NATIVE_FP32_GEMM", raising=False)
    b = NativeBackend(root)
    if not USABLE:  # the portable fallback
        assert b.engine.fp32_gemm == "OpenBLAS"
        return
    assert b.engine.fp32_gemm == "oneDNN" and "fp32 GEMMs on oneDNN" in b.describe()
    got = b(x)[0]
    assert rel_l2(ref, got) <= FP32_TOL
    monkeypatch.setenv("S2E_NATIVE_FP32_GEMM", "onednn")
    np.testing.assert_array_equal(NativeBackend(root)(x)[0], got)


@pytest.mark.parametrize("task", ["normal", "albedo"])
def test_dense_heads_match_torch_on_both_libraries(task, tmp_path, monkeypatch):
    """A dense head runs channels last on oneDNN (its 3x3 convolution kernels, each PixelShuffle with its
    InstanceNorm or RMSNorm in one pass) and channels first through im2col GEMMs on OpenBLAS: both are
    the torch model in float32, and each says which library ran."""
    model = tiny_model(task, TINY, seed=4)
    root = export(model, tmp_path / "a", format="native", input_size=SIZE, verify=False)
    x = verification_inputs(SIZE, batch=2, seed=8)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    for library in ("openblas", "onednn") if USABLE else ("openblas",):
        monkeypatch.setenv("S2E_NATIVE_FP32_GEMM", library)
        b = NativeBackend(root)
        assert b.engine.fp32_gemm == {"openblas": "OpenBLAS", "onednn": "oneDNN"}[library]
        got = b(x)[0]
        assert got.shape == ref.shape and rel_l2(ref, got) <= FP32_TOL, (library, rel_l2(ref, got))


def test_onednn_stays_fp32_when_its_environment_asks_for_bf16(case, tmp_path):
    """oneDNN reads ONEDNN_DEFAULT_FPMATH_MODE when it loads: a fresh process with it set to BF16."""
    if not USABLE:
        pytest.skip("no oneDNN: its wheel (the [onednn] extra, in [all]) exists for Linux x86-64 only")
    root, x, ref = case
    np.save(tmp_path / "x.npy", x)
    code = f"""
import numpy as np
from sapiens2_edge.runtime.native_backend import NativeBackend
b = NativeBackend({str(root)!r})
assert b.engine.fp32_gemm == "oneDNN", b.describe()
np.save({str(tmp_path / "got.npy")!r}, b(np.load({str(tmp_path / "x.npy")!r}))[0])
"""
    env = {"PATH": "/usr/bin:/bin", "ONEDNN_DEFAULT_FPMATH_MODE": "BF16", "S2E_NATIVE_FP32_GEMM": "onednn"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert rel_l2(ref, np.load(tmp_path / "got.npy")) <= FP32_TOL


def test_unknown_library_is_refused(case, monkeypatch):
    monkeypatch.setenv("S2E_NATIVE_FP32_GEMM", "mkl")
    with pytest.raises(ConfigError, match="S2E_NATIVE_FP32_GEMM='mkl' is not a GEMM library the engine has; expected "
                                          "'onednn' or 'openblas'"):
        NativeBackend(case[0])


def test_without_onednn_falls_back_or_refuses_when_asked_for(case):
    """oneDNN is opened once per process, so this runs where it cannot be found."""
    code = f"""
from sapiens2_edge.runtime import native_backend as nb
from sapiens2_edge.errors import ConfigError
import os
nb.onednn_library = lambda: ""
print("DEFAULT", nb.NativeBackend({str(case[0])!r}).describe())
os.environ["S2E_NATIVE_FP32_GEMM"] = "onednn"
try:
    nb.NativeBackend({str(case[0])!r})
except ConfigError as e:
    print("REFUSED", e)
"""
    env = {"S2E_ONEDNN_LIBRARY": "missing/libdnnl.so.3", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DEFAULT native C++ engine (float32 weights, OpenBLAS fp32 GEMMs" in proc.stdout
    assert "REFUSED S2E_NATIVE_FP32_GEMM=onednn: oneDNN not found (missing/libdnnl.so.3" in proc.stdout
