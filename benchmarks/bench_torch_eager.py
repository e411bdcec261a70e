"""Baseline: the torch fp32 eager reference model, any preset and input size (the head's layers one
by one, as the official model runs them, not the package's lean eager head).

Each configuration runs in a fresh process so its peak RSS is its own. Weights are random (speed
does not depend on them). Reports build time, latency count/min/median/p90/max, throughput and
peak RSS, and appends Markdown + CSV rows under benchmarks/results/.

    python benchmarks/bench_torch_eager.py --config 0.1b:seg:512x384 --config 0.4b:seg:1024x768
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def measure(arch: str, task: str | None, size: tuple[int, int], warmup: int, runs: int, batch: int) -> dict:
    import torch

    from sapiens2_edge.bench import latency_stats, time_calls
    from sapiens2_edge.models.model import build_model

    t0 = time.perf_counter()
    model = build_model(arch, task, input_size=size)
    build_s = time.perf_counter() - t0
    x = torch.randn(batch, 3, *size)
    from sapiens2_edge.models.lean_head import layer_by_layer

    with torch.inference_mode(), layer_by_layer():
        stats = latency_stats(time_calls(lambda: model(x), warmup, runs))
    return {
        "arch": model.arch.name, "task": task or "featmap", "input": f"{size[0]}x{size[1]}", "batch": batch,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1), "build_s": round(build_s, 2),
        **{k: (round(v, 3) if k != "count" else v) for k, v in stats.items()},
        "throughput_img_s": round(batch / stats["median_s"], 3),
        "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }


def parse_config(text: str) -> tuple[str, str | None, tuple[int, int]]:
    arch, task, size = text.split(":")
    h, w = (int(v) for v in size.split("x"))
    return arch, (None if task in ("none", "featmap") else task), (h, w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", help="ARCH:TASK:HxW, e.g. 0.4b:seg:1024x768 (TASK none = featmap)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--no-save", action="store_true", help="print only")
    args = ap.parse_args()

    if args.child:
        arch, task, size = parse_config(args.child)
        print(json.dumps(measure(arch, task, size, args.warmup, args.runs, args.batch)))
        return

    configs = args.config or ["0.1b:seg:512x384", "0.4b:seg:1024x768"]
    rows = []
    for cfg in configs:
        cmd = [sys.executable, __file__, "--child", cfg, "--warmup", str(args.warmup), "--runs", str(args.runs),
               "--batch", str(args.batch)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['arch']:>14} {row['task']:>8} {row['input']:>9}  median {row['median_s']:.3f} s  "
              f"min {row['min_s']:.3f}  p90 {row['p90_s']:.3f}  max {row['max_s']:.3f}  "
              f"{row['throughput_img_s']:.2f} img/s  peak RSS {row['peak_rss_MiB']:.0f} MiB", flush=True)
    if args.no_save:
        return
    RESULTS.mkdir(exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    command = "python benchmarks/bench_torch_eager.py " + " ".join(f"--config {c}" for c in configs) + \
        f" --warmup {args.warmup} --runs {args.runs} --batch {args.batch}"
    csv_path = RESULTS / "torch_eager.csv"
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["date", "machine", *rows[0].keys()])
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({"date": date.today().isoformat(), "machine": machine, **row})
    md = RESULTS / "torch_eager.md"
    lines = [f"\n## {date.today().isoformat()} on {machine}\n", f"`{command}`\n",
             "| arch | task | input | params (M) | count | min (s) | median (s) | p90 (s) | max (s) | img/s | peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['arch']} | {r['task']} | {r['input']} | {r['params_M']} | {r['count']} | {r['min_s']} | "
              f"{r['median_s']} | {r['p90_s']} | {r['max_s']} | {r['throughput_img_s']} | {r['peak_rss_MiB']} |"
              for r in rows]
    with md.open("a") as f:
        if md.stat().st_size == 0:
            f.write("# torch fp32 eager baseline (random weights)\n")
        f.write("\n".join(lines) + "\n")
    print(f"saved {csv_path} and {md}")


if __name__ == "__main__":
    main()
