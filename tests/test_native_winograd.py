"""The native engine's dense heads with their 3x3 convolutions by Winograd F(2x2, 3x3) on oneDNN: each
reproduces the torch float model as the direct convolutions do, differs from them (so Winograd ran), runs
the same from run to run (the transformed weights and scratch in the kept maps' spare capacity), the
default keeps the narrow layers of these tiny heads direct, the backend says what ran, and a bad choice
is refused with a message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sapiens2_edge.errors import ConfigError
from sapiens2_edge.exporters import export, verification_inputs
from sapiens2_edge.runtime.native_backend import NativeBackend, onednn_status
from tests.fixtures.compare import rel_l2
from tests.fixtures.tiny import TINY, input_size, tiny_model

pytestmark = pytest.mark.skipif(not onednn_status()[0], reason="the channels-last head needs oneDNN")
SIZE = (160, 128)
FP32_TOL = 1e-4  # as the direct convolutions' (tests/test_native_fp32_gemm.py)


@pytest.fixture(scope="module", params=["normal", "pointmap", "albedo"])
def dense(request, tmp_path_factory):
    task = request.param
    model = tiny_model(task, TINY, seed=4)
    size = input_size(task) if task == "pointmap" else SIZE  # its scale branch has one input size
    root = export(model, tmp_path_factory.mktemp(task) / "a", format="native", input_size=size, verify=False)
    x = verification_inputs(size, batch=1, seed=8)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x))
    ref = tuple(t.numpy() for t in (ref if isinstance(ref, tuple) else (ref,)))
    return task, root, x, ref


def run(root, x, algorithm, monkeypatch):
    monkeypatch.setenv("S2E_NATIVE_FP32_GEMM", "onednn")
    monkeypatch.setenv("S2E_NATIVE_CONV3X3", algorithm)
    backend = NativeBackend(root)
    assert backend.engine.conv3x3_algorithm == algorithm
    return backend, backend(x)


def test_winograd_matches_torch_and_differs_from_direct(dense, monkeypatch):
    task, root, x, ref = dense
    _, direct = run(root, x, "direct", monkeypatch)
    backend, wino = run(root, x, "winograd", monkeypatch)
    for got, want in zip(wino, ref, strict=True):
        assert got.shape == want.shape and rel_l2(want, got) <= FP32_TOL, (task, rel_l2(want, got))
    assert not np.array_equal(wino[0], direct[0])  # rounded differently: the Winograd path ran
    assert "all 3x3 convolutions by Winograd F(2x2, 3x3)" in backend.describe()
    # a second and third run: the transformed weights and bands now in the kept maps' spare capacity
    for _ in range(2):
        np.testing.assert_array_equal(backend(x)[0], wino[0])


def test_default_keeps_narrow_layers_direct(dense, monkeypatch):
    """The tiny heads' channels are all below the engine's Winograd width (256): "auto" runs them direct."""
    task, root, x, _ = dense
    _, direct = run(root, x, "direct", monkeypatch)
    backend, auto = run(root, x, "auto", monkeypatch)
    np.testing.assert_array_equal(auto[0], direct[0])
    assert "the wide 3x3 convolutions by Winograd" in backend.describe()
    _, _ = run(root, x, "direct", monkeypatch)
    assert "Winograd" not in NativeBackend(root).describe()


def test_other_heads_do_not_mention_winograd(tmp_path, monkeypatch):
    root = export(tiny_model("seg", TINY, seed=2), tmp_path / "a", format="native", input_size=SIZE, verify=False)
    monkeypatch.setenv("S2E_NATIVE_FP32_GEMM", "onednn")
    monkeypatch.delenv("S2E_NATIVE_CONV3X3", raising=False)
    backend = NativeBackend(root)
    assert backend.engine.conv3x3_algorithm == "auto" and "Winograd" not in backend.describe()


def test_unknown_algorithm_is_refused(tmp_path, monkeypatch):
    root = export(tiny_model("normal", TINY, seed=2), tmp_path / "a", format="native", input_size=SIZE,
                  verify=False)
    monkeypatch.setenv("S2E_NATIVE_CONV3X3", "fft")
    with pytest.raises(ConfigError, match="S2E_NATIVE_CONV3X3='fft' is not a convolution algorithm the engine "
                                          "has; expected 'auto', 'winograd' or 'direct'"):
        NativeBackend(root)
