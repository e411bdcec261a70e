"""Several artifacts opened as the Predictor opens them (backend auto), timed in one process with
their calls interleaved (a, b, c, a, b, c, ...): a same-moment A/B of recipes or formats whose
difference is smaller than a machine's drift between minutes. Latency only (one process: no RSS).
With --env VAR=a,b each artifact is opened once per value of the environment variable VAR (an engine
setting read when it opens, such as the native engine's S2E_NATIVE_INT8_WEIGHTS).

    python benchmarks/interleaved_artifacts.py DIR_A DIR_B [...] [--runs 15]
    python benchmarks/interleaved_artifacts.py DIR --env S2E_NATIVE_INT8_WEIGHTS=packed,file
"""

from __future__ import annotations

import argparse
import os
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
    p.add_argument("--env", default="", help="VAR=a,b: open each artifact once per value of VAR")
    a = p.parse_args(argv)
    variable, _, values = a.env.partition("=")
    listed = values.split(",")
    if a.env and (not variable or "" in listed or len(set(listed)) != len(listed)):
        p.error(f"--env takes VAR=value,value with distinct, non-empty values; got {a.env!r}")
    settings = [(variable, v) for v in listed] if a.env else [None]
    before = os.environ.get(variable) if a.env else None
    opened = {}
    for root in a.artifacts:
        for setting in settings:
            if setting:
                os.environ[setting[0]] = setting[1]
            manifest, runner, _ = open_artifact(root, "auto", "cpu")
            label = f"{root} ({setting[0]}={setting[1]})" if setting else str(root)
            opened[label] = (runner, verification_inputs(tuple(manifest.input_size), 1, seed=0))
            runner(opened[label][1])  # warm-up
    if a.env:  # the setting was read when each opened: the shell's value back for what follows
        if before is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before
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
