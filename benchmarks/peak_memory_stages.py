"""Where an artifact's peak memory is reached: the process's peak RSS after opening it as the runtime
does, after its first run, and after later runs that each keep the previous result (as a caller
holding one result while asking for the next does).

    python benchmarks/peak_memory_stages.py ARTIFACT_DIR [--backend openvino] [--runs 3]

Opening an OpenVINO artifact includes compiling it; the input is one random image at the
artifact's input size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("--backend", default="openvino")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args(argv)
    from sapiens2_edge.bench import peak_rss_mb
    from sapiens2_edge.runtime import open_artifact

    def show(step: str) -> None:
        print(f"| {step} | {peak_rss_mb():.0f} |", flush=True)

    print("| step | peak RSS (MB) |\n|---|---|")
    show("started")
    manifest, run, _ = open_artifact(a.artifact, a.backend, "cpu")
    show("opened")
    h, w = manifest.input_size
    x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    kept = None
    for i in range(a.runs):
        result = run(x)
        show(f"run {i + 1}" + (" (the previous result kept)" if kept is not None else ""))
        kept = result
    print(f"\n{run.describe()}")


if __name__ == "__main__":
    main()
