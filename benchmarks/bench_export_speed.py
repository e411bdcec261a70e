"""Speed and memory of quantized CPU artifacts against torch fp32 eager, in one run.

Builds a random-weight model (speed does not depend on the weights), quantizes it with our
recipe (static int8 activations: the form ONNX Runtime and OpenVINO run with int8 kernels),
exports each requested format, and measures every artifact and the torch fp32 eager baseline with
``sapiens2_edge.bench`` (each row in its own process: its own peak RSS).

    python benchmarks/bench_export_speed.py --arch 0.4b --task seg --input-size 1024x768 \\
        --formats openvino:int8,onnx:int8 --runs 3 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sapiens2_edge import bench as benchmod
from sapiens2_edge.artifact import read_manifest
from sapiens2_edge.exporters import export, verification_inputs
from sapiens2_edge.models.model import build_model
from sapiens2_edge.quantization import quantize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="0.4b")
    ap.add_argument("--task", default="seg")
    ap.add_argument("--input-size", default="1024x768")
    ap.add_argument("--formats", default="openvino:int8,onnx:int8", help="format:scheme,... (scheme fp32 = float)")
    ap.add_argument("--calib", type=int, default=2, help="synthetic calibration inputs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--tolerance", type=float, default=None, help="export verification bound (default per precision)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/s2e_export_speed"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/export_speed"))
    args = ap.parse_args()
    h, w = (int(v) for v in args.input_size.split("x"))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = build_model(args.arch, args.task, input_size=(h, w), seed=0).eval()
    log = {"command": "python " + " ".join(sys.argv), "exports": {}}
    quantized = {}
    artifacts = []
    for spec in args.formats.split(","):
        fmt, scheme = spec.split(":")
        if scheme not in ("fp32", "fp16") and scheme not in quantized:
            t = time.perf_counter()
            calib = [torch.from_numpy(verification_inputs((h, w), batch=1, seed=100 + i)) for i in range(args.calib)]
            quantized[scheme] = quantize(model, scheme, calibration=calib, input_size=(h, w), batch_size=1,
                                         calibration_size=args.calib, activation_mode="static", report_samples=0,
                                         progress=False)[0]
            log[f"quantize_{scheme}_s"] = round(time.perf_counter() - t, 1)
            print(f"quantized {scheme} in {log[f'quantize_{scheme}_s']} s", flush=True)
        src = model if scheme in ("fp32", "fp16") else quantized[scheme]
        t = time.perf_counter()
        root = export(src, args.work / f"{fmt}-{scheme}", format=fmt, precision=scheme if src is model else None,
                      input_size=(h, w), max_batch=1, tolerance=args.tolerance, overwrite=True)
        m = read_manifest(root, verify=False)
        log["exports"][spec] = {"seconds": round(time.perf_counter() - t, 1), "rel_l2_vs_torch": m.fidelity.get("rel_l2"),
                                "quantization": (m.quantization or {}).get("export")}
        print(f"exported {spec} in {log['exports'][spec]['seconds']} s: rel L2 {m.fidelity.get('rel_l2')}", flush=True)
        artifacts.append(root)
    del model, quantized
    rows = benchmod.run(artifacts, ["auto"], warmup=args.warmup, runs=args.runs)
    base = rows[0]
    for r in rows:
        r["rss_vs_torch"] = r["peak_rss_mb"] / base["peak_rss_mb"]
    files = benchmod.write_reports(rows, args.out, log["command"])
    (args.out / "exports.json").write_text(json.dumps(log, indent=2))
    for r in rows:
        print(f"{r['artifact']:40s} {r['backend']:12s} median {r['median_s']:.3f} s  speed-up {r['speedup']:.2f}x  "
              f"peak RSS {r['peak_rss_mb']:.0f} MB ({r['rss_vs_torch']:.2f}x torch)")
    print("wrote", ", ".join(map(str, files)))


if __name__ == "__main__":
    main()
