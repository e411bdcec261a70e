"""LiteRT (TFLite) artifacts on this CPU: file size, latency and fidelity against the float model,
per precision / scheme, next to torch fp32 eager (what a user would otherwise run).

Rows: torch-fp32 (the baseline and the reference outputs), litert-fp32, litert-fp16 (fp16
weights), litert-int8-weight (our per-channel int8 weights, bit for bit). Random weights
(build_model, seed 0); evaluation on synthetic image-like inputs (verification_inputs, seeds
100..). Latency: batch 1, median of --runs after one warm-up, LiteRT's interpreter (XNNPACK) with
all cores. Fidelity: rel L2 of the logits and seg agreement (argmax) against torch fp32. Exports
are cached under --work. Prints the Markdown section and, with --write, puts it into
benchmarks/results/mobile.md as the section "LiteRT" (other sections are left as they are).

    python benchmarks/bench_litert.py --arch 0.1b --size 512x384 --write
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "mobile.md"
ROWS = ("litert-fp32", "litert-fp16", "litert-int8-weight")


def make(a, row: str, model) -> tuple[Path, float]:
    """(artifact, export seconds; 0 when cached)."""
    import sapiens2_edge as s2e

    out = Path(a.work) / f"{a.arch}-{a.size[0]}x{a.size[1]}-{row}"
    if (out / "manifest.json").exists():
        return out, 0.0
    t = time.perf_counter()
    kind = row.split("-", 1)[1]
    if kind == "int8-weight":
        s2e.export(model, out, format="litert", scheme="int8-weight", input_size=a.size, max_batch=1)
    else:
        s2e.export(model, out, format="litert", precision=kind, input_size=a.size, max_batch=1)
    return out, time.perf_counter() - t


def median_ms(fn, x, runs: int) -> float:
    fn(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def fidelity(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    r, g = np.concatenate(ref).astype(np.float64), np.concatenate(got).astype(np.float64)
    return float(np.linalg.norm(r - g) / np.linalg.norm(r)), float((r.argmax(1) == g.argmax(1)).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="0.1b")
    p.add_argument("--size", default="512x384")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--eval", type=int, default=2, help="evaluation inputs")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--work", default="/tmp/s2e_bench_litert")
    p.add_argument("--write", action="store_true", help="put the section into benchmarks/results/mobile.md")
    a = p.parse_args()
    a.size = tuple(int(v) for v in a.size.split("x"))
    import torch

    from sapiens2_edge.artifact import verification_inputs
    from sapiens2_edge.models.model import build_model
    from sapiens2_edge.runtime import open_artifact

    torch.set_num_threads(os.cpu_count() or 1)
    model = build_model(a.arch, "seg", input_size=a.size, seed=0).eval()
    xs = [verification_inputs(a.size, 1, seed=100 + s) for s in range(a.eval)]
    with torch.inference_mode():
        ref = [model(torch.from_numpy(x)).numpy() for x in xs]
        base_ms = median_ms(lambda x: model(torch.from_numpy(x)), xs[0], a.runs)
    fp32_size = None
    lines = []
    for row in a.rows.split(","):
        t_load = os.getloadavg()[0]
        try:
            art, export_s = make(a, row, model)
            _, runner, _ = open_artifact(art, backend="litert")
            got = [runner(x)[0] for x in xs]
            ms = median_ms(runner, xs[0], a.runs)
        except Exception as e:  # noqa: BLE001 - a failed row is reported as such
            lines.append(f"| {row} | failed: {type(e).__name__}: {' '.join(str(e).split())[:200]} | | | | | |")
            continue
        size = (art / "model.tflite").stat().st_size
        fp32_size = fp32_size or (size if row == "litert-fp32" else None)
        err, agree = fidelity(ref, got)
        ratio = f"{size / fp32_size:.2f}x" if fp32_size else "-"
        lines.append(f"| {row} | {size / 1e6:.1f} MB ({ratio}) | {ms:.0f} ms ({base_ms / ms:.2f}x torch) | "
                     f"{err:.2e} | {100 * agree:.2f} % | {export_s:.0f} s | {t_load:.1f} |")
        print(lines[-1], flush=True)
    section = "\n".join([
        "## LiteRT",
        "",
        f"`python benchmarks/bench_litert.py --arch {a.arch} --size {a.size[0]}x{a.size[1]} --runs {a.runs} "
        f"--eval {a.eval}` ({date.today()}, {platform.machine()}, {os.cpu_count()} cores shared with other jobs: "
        "the load column is the 1-minute load average when the row started; timings are noisy).",
        "Random weights (seed 0), seg head, batch 1; LiteRT interpreter (ai-edge-litert, XNNPACK) with all cores; "
        f"torch fp32 eager baseline {base_ms:.0f} ms. Fidelity against torch fp32 on {a.eval} synthetic inputs.",
        "",
        f"| {a.arch} {a.size[0]}x{a.size[1]} | file | latency (median) | rel L2 vs float | seg agreement | export | load |",
        "|---|---|---|---|---|---|---|",
        *lines,
        "",
    ])
    print(section)
    if a.write:
        write_section(section, f"{a.arch} {a.size[0]}x{a.size[1]}")


def write_section(section: str, key: str) -> None:
    """Put ``section`` under "## LiteRT" in mobile.md: one table per model/size, the others kept."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Mobile formats on this CPU\n\n"
    marker, closing = f"<!-- litert {key} -->", f"<!-- /litert {key} -->\n"
    block = f"{marker}\n{section.split(chr(10), 2)[2]}{closing}"
    if marker in text:
        start = text.index(marker)
        end = text.index(closing, start) + len(closing)
        text = text[:start] + block + text[end:]
    elif "## LiteRT\n" in text:
        i = text.index("## LiteRT\n") + len("## LiteRT\n")
        nxt = text.find("\n## ", i)
        at = len(text) if nxt < 0 else nxt + 1
        text = text[:at] + "\n" + block + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n## LiteRT\n\n" + block
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
