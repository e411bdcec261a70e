"""Latency of several OpenVINO models timed in turn in one process: on a machine whose speed drifts
between minutes, each model's calls then see the same moments (A, B, C, A, B, C, ...), so their ratios
compare even when the medians move. For two exports of one model (before / after a graph change) and a
peer's IR.

    python benchmarks/ov_interleaved.py ARTIFACT_DIR [ARTIFACT_DIR | PEER.xml --size 512x384] ... [--runs 30]

An artifact directory is compiled as the runtime compiles it (its manifest's precision policy on this CPU);
an .xml IR with OpenVINO's defaults. Batch 1, one input of standard normal values (seed 0); each model's
output is compared with the first model's (rel L2).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def compiled_model(path: Path, size: tuple[int, int] | None):
    """(compiled model, input shape, how it was compiled)."""
    import openvino as ov

    from sapiens2_edge.artifact import read_manifest
    from sapiens2_edge.runtime.openvino_backend import resolve_precision

    core = ov.Core()
    if path.suffix == ".xml":
        if size is None:
            raise SystemExit(f"{path}: an IR without a manifest needs --size HxW")
        compiled = core.compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
        return compiled, [1, 3, *size], "OpenVINO's defaults"
    m = read_manifest(path)
    hint, mode, why = resolve_precision(m.options.get("inference_precision"), m.precision)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint,
              **({"EXECUTION_MODE_HINT": mode} if mode else {})}
    compiled = core.compile_model(str(path / "openvino" / "model.xml"), "CPU", config)
    return compiled, [1, 3, *m.input_size], f"{hint} ({why})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--size", type=lambda s: tuple(int(v) for v in s.split("x")), help="HxW of .xml models")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--pause", type=float, default=0.2, help="seconds between two calls")
    args = p.parse_args()
    rows = []
    for path in args.models:
        compiled, shape, how = compiled_model(path, args.size)
        request = compiled.create_infer_request()
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for _ in range(args.warmup):
            request.infer([x])
        out = np.concatenate([o.ravel() for o in request.infer([x]).values()])
        rows.append((path, request, x, how, out, []))
    for _ in range(args.runs):
        for _, request, x, _, _, times in rows:
            start = time.perf_counter()
            request.infer([x])
            times.append(time.perf_counter() - start)
            time.sleep(args.pause)
    first = rows[0][4]
    print("| model | compiled | median (ms) | min (ms) | vs the first | rel L2 vs the first |\n|---|---|---|---|---|---|")
    base = float(np.median(rows[0][5]))
    for path, _, _, how, out, times in rows:
        med = float(np.median(times))
        rel = np.linalg.norm(out - first) / np.linalg.norm(first) if out.shape == first.shape else float("nan")
        print(f"| {path} | {how} | {med * 1e3:.1f} | {min(times) * 1e3:.1f} | {med / base:.3f}x | {rel:.2e} |")


if __name__ == "__main__":
    main()
