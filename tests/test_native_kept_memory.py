"""What the native engine keeps between runs: the buffers of the last run, but not a head layer's large
weights (a float copy and oneDNN's packed copy) once the layers after it read much less. (A later run reads
a head layer's weights into the spare capacity of the kept maps instead; that its outputs stay those of a
fresh engine, bit for bit, is test_native_engine.py's test_buffers_kept_between_runs_change_nothing.)"""

from __future__ import annotations

import numpy as np
import pytest

from sapiens2_edge.exporters import export, verification_inputs
from sapiens2_edge.models.arch import HeadSpec
from sapiens2_edge.models.model import build_model
from sapiens2_edge.runtime.native_backend import import_native, onednn_status
from tests.fixtures.tiny import INPUT, TINY

native = import_native()
#: the channels-last head (oneDNN's convolutions) is where the engine gives buffers back
pytestmark = pytest.mark.skipif(not onednn_status()[0],
                                reason="no oneDNN: its wheel (the [onednn] extra, in [all]) exists for Linux x86-64 only")
FLOAT = 4

#: heads whose first upsampling layer's weights are several times those of every later layer
WIDE = {
    "normal": (HeadSpec("normal", 64, 3, upsample=(512, 8, 8, 8), conv=(8, 8, 8), conv_kernel=3),
               4 * 512 * 64 * 9),  # the first upsampling convolution: (4 x 512, 64, 3, 3)
    "seg": (HeadSpec("seg", 64, 29, deconv=(2048, 16, 16, 16), conv=(16, 16), conv_kernel=1),
            64 * 2048 * 16),  # the first transposed convolution: (64, 2048, 4, 4)
}


def engine(model, tmp_path):
    root = export(model, tmp_path / "a", format="native", input_size=INPUT, max_batch=2)  # verified against torch
    e = native.Engine(str(root))
    assert e.fp32_gemm == "oneDNN"  # the channels-last head (with OpenBLAS the engine runs the channels-first one)
    return e


def runs(e):
    """Outputs of runs of 1, 2 and 1 images, and the bytes kept after each."""
    outs, kept = [], []
    for batch, seed in ((1, 1), (2, 2), (1, 1)):
        outs.append(e.run(verification_inputs(INPUT, batch=batch, seed=seed)))
        kept.append(e.kept_bytes)
    return outs, kept


@pytest.mark.parametrize("task", sorted(WIDE))
def test_a_large_head_layers_weights_are_not_kept(task, tmp_path, monkeypatch):
    monkeypatch.delenv("S2E_NATIVE_FP32_GEMM", raising=False)
    head, values = WIDE[task]
    outs, kept = runs(engine(build_model(TINY, head=head, seed=3), tmp_path))
    # while that layer ran the engine held its weights twice (as floats and packed): now less than once
    assert max(kept) < values * FLOAT, (kept, values * FLOAT)
    for a, b in zip(outs[0], outs[2], strict=True):
        assert np.array_equal(a, b)

