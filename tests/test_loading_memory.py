"""Loading a checkpoint holds its weights once: tensors read straight from the file into the model's
parameters (no random initialisation to throw away, no second copy), each in torch's own 64-byte
aligned memory, with the same values as ``safe_open`` reads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sapiens2_edge.errors import StateDictMismatchError
from sapiens2_edge.models.arch import ArchSpec
from sapiens2_edge.models.model import build_model
from sapiens2_edge.models.safetensors_io import iter_tensors, read_tensors
from tests.fixtures.tiny import save, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def test_tensors_read_one_by_one_equal_safe_open_and_are_aligned(tmp_path):
    path = save(tiny_model("seg"), tmp_path / "m.safetensors", dtype=torch.float16)
    expected = read_tensors(path)
    got = dict(iter_tensors(path, expected))
    assert list(got) == list(expected)
    for name, t in got.items():
        assert t.dtype == expected[name].dtype and torch.equal(t, expected[name]), name
        assert t.data_ptr() % 64 == 0, name


def test_reading_a_name_the_file_lacks_is_an_error(tmp_path):
    path = save(tiny_model("seg"), tmp_path / "m.safetensors")
    with pytest.raises(StateDictMismatchError, match="has no tensor named 'backbone.nope'"):
        list(iter_tensors(path, ["backbone.nope"]))


def test_loaded_parameters_are_aligned_and_exact(tmp_path):
    import sapiens2_edge as s2e

    model = tiny_model("pose")
    loaded = s2e.load_model(save(model, tmp_path / "m.safetensors"))
    for (name, p), q in zip(loaded.state_dict().items(), model.state_dict().values(), strict=True):
        assert p.device.type == "cpu" and p.data_ptr() % 64 == 0, name
        assert p.dtype == q.dtype and torch.equal(p, q), name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak (VmHWM) is read and reset through Linux's /proc")
def test_loading_holds_the_weights_once(tmp_path):
    """A ~100 MB fp32 checkpoint in a fresh process: the peak grows by the weights and little more
    (it grew by twice the weights when the model was initialised first and the file's tensors copied in)."""
    arch = ArchSpec(512, 8, 8, (8,) * 8, 2048, name="mem")
    path = save(build_model(arch, "seg"), tmp_path / "m.safetensors")
    warm = save(tiny_model("seg"), tmp_path / "tiny.safetensors")  # the loader's own imports, before measuring
    size = path.stat().st_size
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        from sapiens2_edge.models import loading
        def status(key):
            line = next(v for v in open("/proc/self/status") if v.startswith(key + ":"))
            return int(line.split()[1]) * 1024
        loading.load_model({str(warm)!r})
        open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from here
        before = status("VmRSS")
        model = loading.load_model({str(path)!r})
        print(status("VmHWM") - before)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    grew = int(out.stdout.strip().splitlines()[-1])
    assert grew < 1.3 * size, (grew, size)


def test_loading_does_not_wake_torchs_symbolic_machinery(tmp_path):
    """The model is built on the meta device; nothing in it may compute there: a meta-device
    ``arange`` runs torch's Python decompositions, which import sympy and ~900 modules more on
    first use (1.2 s of every load, a tiny checkpoint's load took 2.6 s instead of 1.4)."""
    import sapiens2_edge as s2e
    from sapiens2_edge.quantization.serialize import save_quantized

    model = tiny_model("seg")
    float_path = save(model, tmp_path / "m.safetensors")
    quantized_path = save_quantized(s2e.quantize(model, "int8-weight")[0], tmp_path / "q.safetensors")
    for path in (float_path, quantized_path):
        script = textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(ROOT)!r})
            import sapiens2_edge
            sapiens2_edge.load_model({str(path)!r})
            print(sorted(m for m in sys.modules if m.split(".")[0] in ("sympy", "mpmath")))
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        assert out.stdout.strip().splitlines()[-1] == "[]", (path.name, out.stdout)
