"""A short atheris run over the native parsers (safetensors, JSON, configuration) through the
bindings: any exception other than the typed errors, or a crash, fails it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_native_parser.py"


def test_fuzz_parsers_20s(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "-max_total_time=20", "-rss_limit_mb=2048",
                           f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    runs = int(log.rsplit("Done ", 1)[1].split(" runs")[0])
    assert runs > 1000, log[-2000:]  # it really ran
    assert not list(tmp_path.glob("crash-*"))
