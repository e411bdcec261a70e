"""Shared helpers of the kernel benchmarks: timing, the device's measured peaks, result files.

Peaks are measured in the same process: HBM bandwidth with a large device copy (read + write),
dense TFLOP/s with a large bf16 matmul. Timings are medians over CUDA events (``time.perf_counter``
on CPU, where the numbers only exercise the script).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parents[1] / "results" / "kernels"


def dry_run_env() -> None:
    """CPU dry run: kernels through the Triton interpreter (set before any kernel launches)."""
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ.setdefault("SAPIENS2_EDGE_KERNELS", "triton")


def with_mode(mode: str, fn):
    """``fn`` run with the kernel switch in ``mode``: the model's own modules pick the path."""
    from sapiens2_edge.kernels import switch

    def run():
        with switch.override(mode=mode):
            return fn()
    return run


def bench_device(dry_run: bool) -> torch.device | None:
    """CUDA for a real run; the CPU (through the interpreter) for ``--dry-run``; None, with a message,
    when a real run finds no CUDA device."""
    if dry_run:
        dry_run_env()
        return torch.device("cpu")
    if not torch.cuda.is_available():
        import sys

        print("no CUDA device: run with --dry-run on a CPU", file=sys.stderr)
        return None
    return torch.device("cuda")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 5, reps: int = 20) -> float:
    """Median milliseconds of ``fn()``; the L2 cache is flushed before each timed call on CUDA."""
    flush = torch.empty(64 << 20, dtype=torch.int8, device=device) if device.type == "cuda" else None
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        if flush is not None:
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_peaks(device: torch.device, small: bool = False) -> dict:
    """Measured peak memory bandwidth (GB/s, copy of 1 GiB) and bf16 matmul TFLOP/s (8192^3)."""
    n = (1 << 20) if small else (1 << 29)
    src = torch.empty(n, dtype=torch.float16, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    size = 256 if small else 8192
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    mm = time_ms(lambda: a @ b, device)
    return {"hbm_GBps": 2 * src.numel() * src.element_size() / ms / 1e6, "matmul_TFLOPs": 2 * size**3 / mm / 1e9,
            "matmul_dtype": str(dtype).replace("torch.", "")}


def device_info(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": name, "torch": torch.__version__}


def row(name: str, ms: float, nbytes: float | None, flops: float | None, peaks: dict, base_ms: float | None) -> dict:
    """One result row: time, GB/s and TFLOP/s with their share of the measured peaks, speed-up."""
    r = {"variant": name, "ms": round(ms, 4)}
    if nbytes:
        r["GB/s"] = round(nbytes / ms / 1e6, 1)
        r["%HBM"] = round(100 * nbytes / ms / 1e6 / peaks["hbm_GBps"], 1)
    if flops:
        r["TFLOP/s"] = round(flops / ms / 1e9, 2)
        r["%matmul"] = round(100 * flops / ms / 1e9 / peaks["matmul_TFLOPs"], 1)
    if base_ms:
        r["speedup"] = round(base_ms / ms, 2)
    return r


def markdown(title: str, rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(stem: str, header: dict, sections: dict[str, list[dict]], out_dir: Path | None = None) -> Path:
    """Write ``<stem>.json`` and ``<stem>.md`` under benchmarks/results/kernels/ (or ``out_dir``)."""
    out = Path(out_dir or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({**header, "sections": sections}, indent=1) + "\n")
    md = [f"## {stem}", "", "```", json.dumps(header, indent=1), "```", ""]
    md += [markdown(title, rows) for title, rows in sections.items()]
    (out / f"{stem}.md").write_text("\n".join(md))
    return out / f"{stem}.md"
