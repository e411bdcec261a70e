"""The native engine's heads by Winograd on oneDNN: the dense heads' 3x3 convolutions (F(m x m, 3 x 3)) and
the pose / seg heads' transposed convolutions (F(m x m, 2 x 2) on each output phase). Each reproduces the
torch float model as the direct kernels do, differs from them (so Winograd ran), runs the same from run to
run (the transformed weights and scratch in the kept maps' spare capacity), the default keeps the narrow
layers of the tiny heads direct and takes the wide ones, the backend says what ran, and a bad choice is
refused with a message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sapiens2_edge as s2e
from sapiens2_edge.errors import ConfigError
from sapiens2_edge.exporters import export, verification_inputs
from sapiens2_edge.models.arch import ArchSpec, HeadSpec
from sapiens2_edge.models.model import build_model
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
    assert "all float32 3x3 convolutions by Winograd" in backend.describe()
    # a second and third run: the transformed weights and bands now in the kept maps' spare capacity
    for _ in range(2):
        np.testing.assert_array_equal(backend(x)[0], wino[0])


def test_default_keeps_narrow_layers_direct(dense, monkeypatch):
    """The tiny heads' layers are all narrower than the engine's Winograd threshold (256 x 128 channel pairs):
    "auto" runs them direct."""
    task, root, x, _ = dense
    _, direct = run(root, x, "direct", monkeypatch)
    backend, auto = run(root, x, "auto", monkeypatch)
    np.testing.assert_array_equal(auto[0], direct[0])
    assert "the float32 3x3 convolutions by Winograd where it pays on this CPU" in backend.describe()
    assert "Winograd" not in run(root, x, "direct", monkeypatch)[0].describe()


#: a backbone of width 256 and a normal head whose layers from 256 x 128 channel pairs the default may take by
#: Winograd: on AVX2 CPUs input_conv 256 -> 256 and the upsampling convolutions 256 -> 1024 and 256 -> 512 on
#: maps of fewer than 128 4x4 tiles (2x2 tiles) and 128 -> 512 on an 80x64 map (4x4 tiles); on AVX-512 CPUs the
#: last alone (the others' maps have fewer than 192 tiles); the 128 -> 64 one and the 16 -> 8 / 8 -> 8 ones
#: direct on both
WIDE = ArchSpec(256, 2, 4, (4, 4), 512, name="wide-head")
WIDE_NORMAL = HeadSpec("normal", 256, 3, upsample=(256, 128, 128, 16), conv=(8, 8, 8), conv_kernel=3)
WIDE_SIZE = (320, 256)


def test_an_int8_artifacts_float_head_runs_by_winograd_too(tmp_path, monkeypatch):
    """An int8 artifact keeps its head float (the default recipe): its wide 3x3 convolutions take the same
    Winograd path, and the artifact stays as close to its torch QuantizedModel as with direct ones."""
    model = build_model(WIDE, head=WIDE_NORMAL, seed=5)
    calib = [torch.from_numpy(verification_inputs(WIDE_SIZE, batch=1, seed=s)) for s in range(20, 24)]
    qmodel, _ = s2e.quantize(model, "int8", calibration=calib, input_size=WIDE_SIZE, activation_mode="static",
                             progress=False)
    root = export(qmodel, tmp_path / "a", format="native", input_size=WIDE_SIZE, verify=False)
    x = verification_inputs(WIDE_SIZE, batch=1, seed=9)
    with torch.inference_mode():
        ref = qmodel(torch.from_numpy(x)).numpy()
    backend, (auto,) = run(root, x, "auto", monkeypatch)
    _, (direct,) = run(root, x, "direct", monkeypatch)
    assert backend.engine.weight_format == "int8"
    assert "the float32 3x3 convolutions by Winograd where it pays on this CPU" in backend.describe()
    assert not np.array_equal(auto, direct)
    assert rel_l2(ref, auto) <= max(2 * rel_l2(ref, direct), FP32_TOL), (rel_l2(ref, auto), rel_l2(ref, direct))


@pytest.fixture(scope="module", params=["pose", "seg"])
def deconv_head(request, tmp_path_factory):
    task = request.param
    model = tiny_model(task, TINY, seed=6)
    root = export(model, tmp_path_factory.mktemp(task) / "a", format="native", input_size=SIZE, verify=False)
    x = verification_inputs(SIZE, batch=1, seed=7)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    return task, root, x, ref


def run_deconv(root, x, algorithm, monkeypatch):
    monkeypatch.setenv("S2E_NATIVE_FP32_GEMM", "onednn")
    monkeypatch.setenv("S2E_NATIVE_DECONV", algorithm)
    backend = NativeBackend(root)
    assert backend.engine.deconv_algorithm == algorithm
    return backend, backend(x)[0]


def test_transposed_convolutions_by_winograd_match_torch(deconv_head, monkeypatch):
    task, root, x, ref = deconv_head
    _, direct = run_deconv(root, x, "direct", monkeypatch)
    backend, wino = run_deconv(root, x, "winograd", monkeypatch)
    assert wino.shape == ref.shape and rel_l2(ref, wino) <= FP32_TOL, (task, rel_l2(ref, wino))
    assert not np.array_equal(wino, direct)
    assert "all float32 transposed convolutions by Winograd" in backend.describe()
    assert "3x3" not in backend.describe()
    for _ in range(2):  # from the second run on in the kept maps' spare capacity: the same values
        np.testing.assert_array_equal(backend(x)[0], wino)
    # the tiny heads' transposed convolutions are narrower than the default's threshold: direct
    auto_backend, auto = run_deconv(root, x, "auto", monkeypatch)
    np.testing.assert_array_equal(auto, direct)
    assert "the float32 transposed convolutions by Winograd where it pays on this CPU" in auto_backend.describe()
    assert "Winograd" not in run_deconv(root, x, "direct", monkeypatch)[0].describe()


#: a width-512 backbone and a seg head whose first transposed convolution (512 -> 512 channels on the 64x48 map
#: of a 1024x768 input) the default runs by Winograd on every CPU kind, and the next (512 -> 32) not. On AVX-512
#: the first sits on both of the rule's limits (cin cout = 256 (cin + cout), 192 tiles): moving either changes
#: this layer's choice, and test_winograd_where_it_measured_faster's table with it.
WIDE_SEG_ARCH = ArchSpec(512, 1, 8, (8,), 512, name="wide-seg")
WIDE_SEG = HeadSpec("seg", 512, 29, deconv=(512, 32), conv=(16,), conv_kernel=1)
WIDE_SEG_SIZE = (1024, 768)


@pytest.mark.parametrize("arch, head, size", [(WIDE, WIDE_NORMAL, WIDE_SIZE), (WIDE_SEG_ARCH, WIDE_SEG, WIDE_SEG_SIZE)],
                         ids=["3x3", "transposed"])
def test_default_runs_the_wide_layers_by_winograd(arch, head, size, tmp_path, monkeypatch):
    model = build_model(arch, head=head, seed=5)
    root = export(model, tmp_path / "a", format="native", input_size=size, verify=False)
    x = verification_inputs(size, batch=1, seed=9)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()

    def output(algorithm):
        if head.deconv:
            return run_deconv(root, x, algorithm, monkeypatch)[1]
        return run(root, x, algorithm, monkeypatch)[1][0]

    outs = {a: output(a) for a in ("direct", "auto", "winograd")}
    for algorithm, got in outs.items():
        assert rel_l2(ref, got) <= FP32_TOL, (algorithm, rel_l2(ref, got))
    # the wide layers ran by Winograd, and the narrow ones did not
    assert not np.array_equal(outs["auto"], outs["direct"])
    assert not np.array_equal(outs["auto"], outs["winograd"])


def test_dense_heads_do_not_mention_transposed_convolutions(tmp_path, monkeypatch):
    root = export(tiny_model("normal", TINY, seed=2), tmp_path / "a", format="native", input_size=SIZE,
                  verify=False)
    monkeypatch.setenv("S2E_NATIVE_FP32_GEMM", "onednn")
    monkeypatch.delenv("S2E_NATIVE_DECONV", raising=False)
    description = NativeBackend(root).describe()
    assert "3x3 convolutions by Winograd" in description and "transposed" not in description


def test_unknown_algorithm_is_refused(tmp_path, monkeypatch):
    root = export(tiny_model("normal", TINY, seed=2), tmp_path / "a", format="native", input_size=SIZE,
                  verify=False)
    monkeypatch.setenv("S2E_NATIVE_CONV3X3", "fft")
    with pytest.raises(ConfigError, match="S2E_NATIVE_CONV3X3='fft' is not a convolution algorithm the engine "
                                          "has; expected 'auto', 'winograd' or 'direct'"):
        NativeBackend(root)
    monkeypatch.delenv("S2E_NATIVE_CONV3X3")
    monkeypatch.setenv("S2E_NATIVE_DECONV", "gemm")
    with pytest.raises(ConfigError, match="S2E_NATIVE_DECONV='gemm' is not a transposed convolution algorithm "
                                          "the engine has; expected 'auto', 'winograd' or 'direct'"):
        NativeBackend(root)
