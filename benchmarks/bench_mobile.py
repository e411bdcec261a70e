"""Mobile formats on this CPU: file size, latency and fidelity vs the float model, per format and scheme.

Random weights (build_model, seed 0), one process for all rows (export, then the artifact through
the Predictor's runtime backend). Latency: batch 1, median of --runs after one warm-up, on the
runtime that opens the artifact here (ONNX Runtime for ort, ExecuTorch's XNNPACK runtime for
executorch). Fidelity: rel L2 and seg agreement (argmax) of the artifact vs torch fp32 on
verification_inputs (seeds 10..10+--eval-1). Quantized rows quantize with synthetic calibration
(verification_inputs, seeds 100..); int8 uses static activations.

    python benchmarks/bench_mobile.py --arch 0.1b --size 512x384 --rows ort:fp32,ort:fp16,executorch:fp32
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import sapiens2_edge as s2e
from sapiens2_edge.artifact import compare, verification_inputs
from sapiens2_edge.exporters import torch_outputs
from sapiens2_edge.models.model import build_model
from sapiens2_edge.runtime.opener import open_artifact


def du(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name not in ("reference.npz",))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="0.1b")
    ap.add_argument("--size", default="512x384")
    ap.add_argument("--rows", default="ort:fp32,ort:fp16,ort:int8-weight,ort:int8,executorch:fp32,executorch:fp16")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--eval", type=int, default=2)
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    model = build_model(args.arch, "seg", input_size=size, seed=0).eval()
    xs = [verification_inputs(size, batch=1, seed=10 + i) for i in range(args.eval)]
    refs = [torch_outputs(model, x)[0] for x in xs]
    work = Path(args.work or tempfile.mkdtemp(prefix="s2e_mobile_"))
    print(f"{args.arch} seg {size[0]}x{size[1]}, random weights; torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print("| format | scheme | file (MB) | export (s) | latency median (s) | rel L2 vs fp32 | seg agreement | "
          "verified at export (rel L2 / tol) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in args.rows.split(","):
        fmt, scheme = row.split(":")
        out = work / f"{fmt}-{scheme}"
        kw = {"precision": scheme}
        if scheme not in ("fp32", "fp16"):
            calib = [torch.from_numpy(verification_inputs(size, batch=1, seed=100 + i)) for i in range(4)]
            kw = {"scheme": scheme, "calibration": calib if scheme != "int8-weight" else None,
                  "quantize_options": {"progress": False, **({"activation_mode": "static"} if scheme == "int8" else {})}}
        t = time.perf_counter()
        try:
            root = s2e.export(model, out, format=fmt, input_size=size, max_batch=1, overwrite=True, **kw)
        except Exception as e:  # noqa: BLE001 - a row that fails is reported
            print(f"| {fmt} | {scheme} | failed: {type(e).__name__}: {str(e)[:120]} |")
            continue
        export_s = time.perf_counter() - t
        manifest, runner, _ = open_artifact(root)
        runner(xs[0])  # warm-up
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            runner(xs[0])
            times.append(time.perf_counter() - t)
        got = [runner(x)[0] for x in xs]
        rel = compare([np.concatenate(refs)], [np.concatenate(got)], ["logits"])["rel_l2"]
        agree = float(np.mean([np.mean(r.argmax(1) == g.argmax(1)) for r, g in zip(refs, got, strict=True)]))
        fid = manifest.fidelity
        print(f"| {fmt} | {scheme} | {du(root) / 1e6:.1f} | {export_s:.0f} | {statistics.median(times):.3f} | "
              f"{rel:.2e} | {agree:.4f} | {fid['rel_l2']:.2e} / {fid['tolerance']:g} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
