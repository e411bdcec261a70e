"""The process's memory through a calibration: RSS and peak RSS after loading, after each item of
every progress stage (each block of block-by-block calibration, each report batch) and at the end.
Each peak is the one since the mark before (the kernel's peak is reset at every mark, where Linux
allows it); the whole run's peak is printed at the end.

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

PEAKS: list[int] = []  # MiB, one per mark


def mark() -> str:
    """"RSS/peak" in MiB since the mark before; the peak then starts afresh (``5`` written to
    /proc/self/clear_refs; where that is refused, peaks are since the start)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) // 1024
    PEAKS.append(fields["VmHWM"])
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return f"{fields['VmRSS']}/{fields['VmHWM']}"


def tracked(iterable, total, desc, unit="batch"):
    """A progress display printing the marks after each item of a stage."""
    marks = []
    try:
        for item in iterable:
            yield item
            marks.append(mark())
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
    print(f"loaded: {mark()} MiB", flush=True)
    options = {"report_samples": 0} if a.held_out is None else {"held_out": a.held_out,
                                                                 "held_out_samples": a.eval_samples}
    if a.calibration_input_size:
        options["calibration_input_size"] = a.calibration_input_size
    t0 = time.perf_counter()
    quantize(model, "int8", a.calib, activation_mode="static", calibration_size=a.images, inplace=True,
             progress=tracked, **options)
    seconds = time.perf_counter() - t0
    print(f"end: {mark()} MiB, quantize {seconds:.1f} s; peak of the whole run {max(PEAKS)} MiB "
          "(RSS/peak in MiB after each item, the peak since the mark before)")


if __name__ == "__main__":
    main()
