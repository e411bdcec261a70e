"""The attention kernels' CPU tests (tests/interpreted/) in their own pytest process.

Triton chooses between compiler and interpreter for parts of ``triton.language`` when it is first
imported, and torch (export, inductor) may import it in compiled mode long before these tests run
in a shared process. A child process with ``TRITON_INTERPRET=1`` from the start runs every kernel
through the interpreter for real; its failures are shown here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_attention_kernels_under_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("SAPIENS2_EDGE_KERNELS", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                           "tests/interpreted"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 60 and "skipped" not in summary, summary
