"""Native engine vs ONNX Runtime (fp32) and torch eager; native int8-weight vs native fp32; peak RSS
of the int8-weight artifact vs the fp32 torch eager peak. Random weights (speed and memory only).

Every row runs in its own process (sapiens2_edge.bench), so peak RSS is per runtime. Artifacts are
cached under --workdir and re-used.

    python benchmarks/bench_native.py --arch 0.1b --size 512x384 --runs 3
    python benchmarks/bench_native.py --arch 0.4b --size 1024x768 --runs 2 --out benchmarks/results/native.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository, when not installed

from sapiens2_edge import bench  # noqa: E402 - torch-free: this process stays small (see main)

KINDS = (("onnx-fp32", "onnx", None), ("native-fp32", "native", None), ("native-int8w", "native", "int8-weight"))


def artifact_dirs(arch: str, task: str, size: tuple[int, int], workdir: Path) -> dict[str, Path]:
    return {name: workdir / f"{task}-{arch}-{size[0]}x{size[1]}-{name}" for name, _, _ in KINDS}


def export_missing(arch: str, task: str, size: tuple[int, int], workdir: Path) -> None:
    import sapiens2_edge as s2e
    from sapiens2_edge.models.model import build_model

    model = None
    for (_, fmt, scheme), out in zip(KINDS, artifact_dirs(arch, task, size, workdir).values(), strict=True):
        if not (out / "manifest.json").is_file():
            model = model or build_model(arch, task, input_size=size)
            m = s2e.quantize(model, scheme=scheme, progress=False)[0] if scheme else model
            t = time.perf_counter()
            s2e.export(m, out, format=fmt, input_size=size, max_batch=1, overwrite=True)
            print(f"exported {out.name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="0.1b")
    ap.add_argument("--task", default="seg")
    ap.add_argument("--size", default="512x384", help="HxW")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/s2e-bench-native"))
    ap.add_argument("--out", type=Path, help="append the table to this Markdown file")
    ap.add_argument("--export-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.export_only:
        return export_missing(args.arch, args.task, size, args.workdir)
    arts = artifact_dirs(args.arch, args.task, size, args.workdir)
    if not all((a / "manifest.json").is_file() for a in arts.values()):
        # Export (torch, GBs) in a child: Linux carries a process's peak RSS across fork+exec, so
        # the rows' children would inherit this process's peak.
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--export-only"], check=True)
    rows = bench.run(list(arts.values()), ["auto"], warmup=args.warmup, runs=args.runs, batch=1, baseline=True)
    torch_row, ort, nat, int8w = rows
    ratios = {
        "native fp32 / onnxruntime fp32 latency (target <= 1.25)": nat["median_s"] / ort["median_s"],
        "native int8-weight / native fp32 latency (target <= 1.00)": int8w["median_s"] / nat["median_s"],
        "native int8-weight peak RSS / torch fp32 eager peak RSS (target <= 0.35)":
            int8w["peak_rss_mb"] / torch_row["peak_rss_mb"],
    }
    cmd = "python benchmarks/bench_native.py " + " ".join(sys.argv[1:])
    lines = [f"### {args.arch} {args.task} {size[0]}x{size[1]}, batch 1", "", f"`{cmd}`", "",
             "| runtime | backend | load (s) | count | min | median | max (s) | peak RSS (MB) | size (MB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['artifact']} | {r['backend']} | {r['load_s']:.2f} | {r['count']} | {r['min_s']:.3f} | "
                     f"{r['median_s']:.3f} | {r['max_s']:.3f} | {r['peak_rss_mb']:.0f} | {r['size_mb']:.1f} |")
    lines += ["", *[f"- {k}: **{v:.2f}**" for k, v in ratios.items()], ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
