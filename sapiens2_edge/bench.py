"""``sapiens2-edge bench``: artifacts side by side with the torch fp32 eager baseline.

Each row runs in a fresh process so its peak RSS is its own. The baseline is the torch fp32 eager
model of the artifact's architecture and head at the artifact's input size (random weights: speed
does not depend on them). Reported per row: load time, latency count/min/median/p90/max,
throughput, peak RSS, file size, fidelity (the artifact's verification against torch), speed-up.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError

BASELINE = "torch-fp32-eager"


def time_calls(fn, warmup: int, runs: int) -> list[float]:
    """Wall time of ``runs`` calls of ``fn()`` after ``warmup`` untimed ones, sorted."""
    times = []
    for i in range(warmup + runs):
        t = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return sorted(times)


def latency_stats(times: list[float]) -> dict[str, float]:
    """count / min / median / p90 / max of sorted latencies (seconds)."""
    p90 = times[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
    return {"count": len(times), "min_s": times[0], "median_s": statistics.median(times), "p90_s": p90,
            "max_s": times[-1]}


def peak_rss_mb() -> float:
    """This process's peak resident set. Linux: VmHWM, which belongs to the process image since its
    exec; ``ru_maxrss`` would also carry the parent's peak across fork + exec (a bench started from
    a process holding a big model would report that model for every row)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_row(target: str, backend: str, warmup: int, runs: int, batch: int) -> dict[str, Any]:
    """One row, in this process: ``target`` is an artifact directory or BASELINE:<artifact>."""
    from .artifact import read_manifest, verification_inputs

    t0 = time.perf_counter()
    if target.startswith(BASELINE + ":"):
        root = Path(target.split(":", 1)[1])
        m = read_manifest(root, verify=False)
        from .models.arch import ArchSpec, HeadSpec
        from .models.model import build_model
        from .runtime.torch_backend import TorchBackend

        model = build_model(ArchSpec.from_dict(m.arch), head=HeadSpec.from_dict(m.head) if m.head else None)
        runner, name, size_mb, fidelity, label = TorchBackend(model, "cpu"), "torch", \
            sum(p.numel() * 4 for p in model.parameters()) / 1e6, None, BASELINE
    else:
        from .runtime.opener import open_artifact

        root = Path(target)
        m, runner, _ = open_artifact(root, backend, "cpu")
        name, label = runner.name, f"{root.name} ({m.format} {m.precision})"
        size_mb = sum(f["size"] for f in m.files.values() if f["role"] != "reference") / 1e6
        fidelity = m.fidelity.get("rel_l2")
    load_s = time.perf_counter() - t0
    x = verification_inputs(m.input_size, batch=min(batch, m.max_batch))
    stats = latency_stats(time_calls(lambda: runner(x), warmup, runs))
    return {"artifact": label, "backend": name, "input": f"{m.input_size[0]}x{m.input_size[1]}", "batch": len(x),
            "load_s": load_s, **stats, "throughput_img_s": len(x) / stats["median_s"],
            "peak_rss_mb": peak_rss_mb(), "size_mb": size_mb,
            "fidelity_rel_l2": fidelity}


def run(artifacts: list[Path], backends: list[str], warmup: int = 1, runs: int = 5, batch: int = 1,
        baseline: bool = True) -> list[dict[str, Any]]:
    """All rows, each in a child process; the baseline first, speed-ups relative to it."""
    if not artifacts:
        raise ConfigError("bench needs at least one artifact directory")
    from .artifact import read_manifest

    sizes = {tuple(read_manifest(a, verify=False).input_size) for a in artifacts}
    if len(sizes) > 1:
        raise ConfigError(f"the artifacts were exported for different input sizes {sorted(sizes)}; bench compares "
                          "one size at a time")
    jobs = ([(f"{BASELINE}:{artifacts[0]}", "torch")] if baseline else [])
    jobs += [(str(a), b) for a in artifacts for b in backends]
    rows = []
    for target, backend in jobs:
        cmd = [sys.executable, "-m", "sapiens2_edge.bench", target, backend, str(warmup), str(runs), str(batch)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ConfigError(f"bench of {target} on {backend} failed: {proc.stderr.strip().splitlines()[-1:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = rows[0]["median_s"] if baseline else None
    for r in rows:
        r["speedup"] = base / r["median_s"] if base else None
    return rows


def bench_table(rows: list[dict[str, Any]]):
    """The rows as a rich Table (what ``sapiens2-edge bench`` and the demo print)."""
    from rich.table import Table

    table = Table(title="sapiens2-edge bench")
    for col in ("artifact", "backend", "load s", "median s", "p90 s", "img/s", "peak RSS MB", "size MB", "rel L2",
                "speed-up"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["artifact"], r["backend"], f"{r['load_s']:.2f}", f"{r['median_s']:.3f}", f"{r['p90_s']:.3f}",
                      f"{r['throughput_img_s']:.2f}", f"{r['peak_rss_mb']:.0f}", f"{r['size_mb']:.1f}",
                      "-" if r["fidelity_rel_l2"] is None else f"{r['fidelity_rel_l2']:.1e}",
                      "-" if r["speedup"] is None else f"{r['speedup']:.2f}x")
    return table


def write_reports(rows: list[dict[str, Any]], out_dir: Path, command: str) -> list[Path]:
    """bench.md (a Markdown table headed by ``command``), bench.csv and bench.json in ``out_dir``."""
    import csv

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    with open(out_dir / "bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    head = "| artifact | backend | input | load (s) | count | min | median | p90 | max (s) | img/s | peak RSS (MB) | size (MB) | rel L2 vs torch | speed-up |"
    lines = [f"`{command}`", "", head, "|" + "---|" * 14]
    for r in rows:
        fid = "-" if r["fidelity_rel_l2"] is None else f"{r['fidelity_rel_l2']:.2e}"
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        lines.append(f"| {r['artifact']} | {r['backend']} | {r['input']} | {r['load_s']:.2f} | {r['count']} | "
                     f"{r['min_s']:.3f} | {r['median_s']:.3f} | {r['p90_s']:.3f} | {r['max_s']:.3f} | "
                     f"{r['throughput_img_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['size_mb']:.1f} | {fid} | {sp} |")
    (out_dir / "bench.md").write_text("\n".join(lines) + "\n")
    return [out_dir / n for n in ("bench.md", "bench.csv", "bench.json")]


if __name__ == "__main__":  # child process: one row as JSON on stdout
    target, backend, warmup, runs, batch = sys.argv[1:6]
    print(json.dumps(measure_row(target, backend, int(warmup), int(runs), int(batch))))
