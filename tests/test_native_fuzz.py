"""A short atheris run over the native parsers (safetensors, JSON, configuration) through the
bindings: any exception other than the typed errors, or a crash, fails it."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_native_parser.py"


@pytest.mark.slow
def test_fuzz_parsers_20s(tmp_path):
    # libFuzzer reads the peak RSS through getrusage, which a child inherits from this (large)
    # pytest process across fork + exec: allow 2 GB on top of that inherited peak.
    limit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 + 2048
    proc = subprocess.run([sys.executable, str(SCRIPT), "-max_total_time=20", f"-rss_limit_mb={limit}",
                           f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    runs = int(log.rsplit("Done ", 1)[1].split(" runs")[0])
    assert runs > 1000, log[-2000:]  # it really ran
    assert not list(tmp_path.glob("crash-*"))
