"""The seeded mutation fuzzer (scripts/mutation_fuzz.py) over float and quantized checkpoints,
image files and person boxes: every case ends in success or a typed error, in time and under the
memory ceiling. A quick run by default, 5,000 cases under ``-m slow``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("mutation_fuzz", Path(__file__).resolve().parents[1] / "scripts" /
                                               "mutation_fuzz.py")
fuzz = importlib.util.module_from_spec(_SPEC)
sys.modules["mutation_fuzz"] = fuzz  # dataclasses look their module up there
_SPEC.loader.exec_module(fuzz)


def _check(report) -> None:
    assert report.bad == 0, "\n".join(report.findings[:20])
    assert report.counts["typed"] > 0 and report.counts["ok"] > 0  # the mutations reach both outcomes
    assert set(report.by_kind) == set(fuzz.KINDS)


def test_fuzz_quick():
    _check(fuzz.run(300, seed=0, time_limit=10.0))


@pytest.mark.slow
def test_fuzz_5000_cases():
    report = fuzz.run(5000, seed=1, time_limit=10.0)
    _check(report)
    assert report.counts["timeout"] == 0 and report.max_seconds < 10.0


def test_mutations_are_seeded():
    with fuzz.tempfile.TemporaryDirectory() as tmp:
        seeds = fuzz.build_seeds(Path(tmp))
        a = [fuzz.make_case(seeds, 7, i, fuzz.KINDS)[2] for i in range(40)]
        b = [fuzz.make_case(seeds, 7, i, fuzz.KINDS)[2] for i in range(40)]
    assert [repr(x) for x in a] == [repr(x) for x in b]
