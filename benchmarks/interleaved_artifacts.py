"""Several artifacts opened as the Predictor opens them (backend auto), timed in one process with
their calls interleaved (a, b, c, a, b, c, ...): a same-moment A/B of recipes or formats whose
difference is smaller than a machine's drift between minutes. Latency only (one process: no RSS).

    python benchmarks/interleaved_artifacts.py DIR_A DIR_B [...] [--runs 15]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    from sapiens2_edge.artifact import verification_inputs
    from sapiens2_edge.runtime import open_artifact

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifacts", type=Path, nargs="+")
    p.add_argument("--runs", type=int, default=15)
    a = p.parse_args(argv)
    opened = {}
    for root in a.artifacts:
        manifest, runner, _ = open_artifact(root, "auto", "cpu")
        opened[root] = (runner, verification_inputs(tuple(manifest.input_size), 1, seed=0))
        runner(opened[root][1])  # warm-up
    times = {root: [] for root in opened}
    for _ in range(a.runs):
        for root, (runner, x) in opened.items():
            start = time.perf_counter()
            runner(x)
            times[root].append(time.perf_counter() - start)
    print("| artifact | runs as | median (s) | p90 (s) |\n|---|---|---|---|")
    for root, (runner, _) in opened.items():
        print(f"| {root} | {runner.describe()} | {np.median(times[root]):.3f} | {np.percentile(times[root], 90):.3f} |")


if __name__ == "__main__":
    main()
