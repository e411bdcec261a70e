"""Quantization: task fidelity on the trained tiny fixture, and torch CPU speed per scheme.

Fidelity: every scheme on the trained seg and pose fixtures (tests/fixtures/data), calibrated on
32 synthetic images and evaluated on 32 held-out ones (other seeds), against the float model.
Speed: torch eager on this CPU, random weights, one preset and input size, each scheme in the same
process (warm-up, several runs, median), with weight bytes.

    python benchmarks/bench_quantize.py                      # fidelity + 0.1b at 512x384
    python benchmarks/bench_quantize.py --speed 0.4b:seg:1024x768 --runs 3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sapiens2_edge as s2e  # noqa: E402
from sapiens2_edge.bench import latency_stats, time_calls  # noqa: E402
from sapiens2_edge.quantization.evaluate import evaluate  # noqa: E402
from sapiens2_edge.quantization.model import state_bytes  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "data"
SCHEMES = ("fp16", "int8-weight", "int8", "fp8")
FIDELITY_KEYS = {"seg": ("seg_agreement", "seg_miou", "sqnr_db"),
                 "pose": ("pose_mean_px", "pose_p95_px", "pose_max_px", "pose_pck_1px", "sqnr_db")}


def fidelity_rows(samples: int) -> list[dict]:
    from tests.fixtures.synthetic import VISIBLE_KEYPOINTS, make_people

    calib, *_ = make_people(samples, seed=1001, size=(128, 96))
    held, *_ = make_people(samples, seed=2002, size=(128, 96))
    rows = []
    for task in ("seg", "pose"):
        model = s2e.load_model(DATA / f"trained_tiny_{task}.safetensors")
        for scheme in SCHEMES:
            q, rep = s2e.quantize(model, scheme, calibration=list(calib), input_size=(128, 96), progress=False)
            # pose: the 23 keypoints the fixture was trained on; its other 285 channels were never
            # supervised, so their peaks have no margin and flip under any perturbation.
            fid = evaluate(model, q, list(held), input_size=(128, 96), samples=samples,
                           keypoints=VISIBLE_KEYPOINTS if task == "pose" else None)
            rows.append({"task": task, "scheme": scheme, **{k: fid[k] for k in FIDELITY_KEYS[task]},
                         "size_ratio": rep.size_after_bytes / rep.size_before_bytes})
    return rows


def speed_rows(config: str, warmup: int, runs: int) -> list[dict]:
    arch, task, size = config.split(":")
    h, w = (int(v) for v in size.split("x"))
    from sapiens2_edge.models.model import build_model

    model = build_model(arch, task, input_size=(h, w))
    x = torch.randn(1, 3, h, w)
    calib = [torch.randn(1, 3, h, w)]
    rows = []
    for scheme in ("fp32", *SCHEMES):
        m = model if scheme == "fp32" else s2e.quantize(model, scheme, calibration=calib, input_size=(h, w),
                                                         report_samples=0, progress=False)[0]
        with torch.inference_mode():
            stats = latency_stats(time_calls(lambda m=m: m(x), warmup, runs))
        rows.append({"config": config, "scheme": scheme, "median_s": stats["median_s"], "min_s": stats["min_s"],
                     "weights_MB": state_bytes(m) / 1e6})
    base = rows[0]["median_s"]
    for r in rows:
        r["speedup"] = base / r["median_s"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--speed", action="append", help="ARCH:TASK:HxW (default 0.1b:seg:512x384)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-fidelity", action="store_true")
    args = ap.parse_args()
    lines = [f"\n## {date.today().isoformat()} on {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)\n",
             "`python benchmarks/bench_quantize.py " + " ".join(sys.argv[1:]) + "`\n"]
    if not args.skip_fidelity:
        rows = fidelity_rows(args.samples)
        lines += ["### Fidelity on the trained tiny fixture (128x96, held-out synthetic images)\n",
                  "| task | scheme | metrics | size vs fp32 |", "|---|---|---|---|"]
        for r in rows:
            metrics = ", ".join(f"{k} {r[k]:.4f}" for k in FIDELITY_KEYS[r["task"]])
            lines.append(f"| {r['task']} | {r['scheme']} | {metrics} | {r['size_ratio']:.3f} |")
            print(lines[-1], flush=True)
    for config in args.speed or ["0.1b:seg:512x384"]:
        rows = speed_rows(config, args.warmup, args.runs)
        lines += [f"\n### torch eager CPU speed, {config} (random weights, batch 1)\n",
                  "| scheme | median (s) | min (s) | speed-up vs fp32 | weights (MB) |", "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['scheme']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['speedup']:.2f}x | "
                         f"{r['weights_MB']:.0f} |")
            print(lines[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "quantize.md"
    with out.open("a") as f:
        if out.stat().st_size == 0:
            f.write("# Quantization benchmarks\n")
        f.write("\n".join(lines) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
