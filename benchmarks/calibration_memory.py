"""The process's memory through a calibration: RSS and peak RSS after loading, after each item of
every progress stage (each block of block-by-block calibration, each report batch) and at the end.

    python benchmarks/calibration_memory.py CHECKPOINT CALIB_DIR [--images 32] [--held-out DIR --eval-samples 1]
        [--calibration-input-size 512x384]

It quantizes to int8 with static activations in place (as the CLI does); set
``SAPIENS2_EDGE_HEAP_REUSE=0`` in the environment to compare with glibc's own heap thresholds.
Linux only (it reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib() -> tuple[int, int]:
    """(RSS, peak RSS) of this process in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) // 1024
    return fields["VmRSS"], fields["VmHWM"]


def tracked(iterable, total, desc, unit="batch"):
    """A progress display printing RSS / peak after each item of a stage."""
    marks = []
    try:
        for item in iterable:
            yield item
            marks.append("%d/%d" % rss_mib())
    finally:  # also where the caller stops early
        print(f"{desc}: {' '.join(marks)}", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("calib", type=Path)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--held-out", type=Path)
    p.add_argument("--eval-samples", type=int, default=1)
    p.add_argument("--calibration-input-size", type=lambda s: tuple(int(v) for v in s.split("x")))
    a = p.parse_args(argv)
    from sapiens2_edge import load_model, quantize

    model = load_model(a.checkpoint)
    print("loaded: %d/%d MiB" % rss_mib(), flush=True)
    options = {"report_samples": 0} if a.held_out is None else {"held_out": a.held_out,
                                                                 "held_out_samples": a.eval_samples}
    if a.calibration_input_size:
        options["calibration_input_size"] = a.calibration_input_size
    t0 = time.perf_counter()
    quantize(model, "int8", a.calib, activation_mode="static", calibration_size=a.images, inplace=True,
             progress=tracked, **options)
    rss, peak = rss_mib()
    print(f"end: {rss}/{peak} MiB, quantize {time.perf_counter() - t0:.1f} s (RSS/peak after each item, MiB)")


if __name__ == "__main__":
    main()
