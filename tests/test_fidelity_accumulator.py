"""Task fidelity accumulated batch by batch (what the held-out report uses, keeping no raw outputs)
equals the metrics over all outputs at once, for every task."""

from __future__ import annotations

import numpy as np
import pytest

from sapiens2_edge.quantization.fidelity import FidelityAccumulator, task_fidelity

SIZE = (64, 48)
SHAPES = {"seg": [(29, 64, 48)], "pose": [(17, 16, 12)], "normal": [(3, 64, 48)], "albedo": [(3, 64, 48)],
          "pointmap": [(3, 64, 48), (1,)], None: [(8, 4, 3)]}


@pytest.mark.parametrize("task", list(SHAPES))
def test_batches_accumulate_to_the_whole_set_metrics(task):
    rng = np.random.default_rng(0)
    ref = tuple(rng.standard_normal((6, *s)).astype(np.float32) + (2.0 if len(s) == 1 else 0.0) for s in SHAPES[task])
    test = tuple((r + 0.3 * rng.standard_normal(r.shape)).astype(np.float32) for r in ref)
    want = task_fidelity(task, ref, test, SIZE)
    acc = FidelityAccumulator(task, SIZE)
    for i in (0, 1, 4):  # uneven batches: 1, 3, 2 images
        j = {0: 1, 1: 4, 4: 6}[i]
        acc.add(tuple(r[i:j] for r in ref), tuple(t[i:j] for t in test))
    got = acc.result()
    assert got.keys() == want.keys() and len(want) > (3 if task else 2)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


def test_seg_keeps_labels_not_logits():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 29, 64, 48)).astype(np.float32)
    acc = FidelityAccumulator("seg", SIZE)
    acc.add((logits,), (logits,))
    (a, b), = acc.parts
    assert a.dtype == np.uint8 and a.shape == (2, 64, 48) and np.array_equal(a, logits.argmax(1))
    assert acc.result()["seg_agreement"] == 1.0


def test_mismatched_outputs_are_refused():
    with pytest.raises(ValueError, match="2 reference outputs against 1 tested"):
        FidelityAccumulator("pointmap", SIZE).add((np.zeros(1), np.zeros(1)), (np.zeros(1),))
