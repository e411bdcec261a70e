"""Mobile formats on this CPU: file size, latency and fidelity vs the float model, per format and scheme.

Rows are FORMAT:SCHEME, FORMAT one of ort, executorch, litert (and torch:fp32, the baseline, always
run first), SCHEME fp32, fp16, int8-weight, int4-weight, int8 (dynamic activations) or int8-static.
Each row is exported in its own process and timed in another, so peak RSS is the row's own and one
row's memory never lands on the next; artifacts are cached under --work, and each quantization scheme is
quantized once per run (saved there) and shared by the formats ("export (s)" includes quantizing for
the first row of a scheme only).

Random weights (build_model, seed 0), seg head, batch 1 through the runtime backend the Predictor
opens (ONNX Runtime for ort, ExecuTorch's runtime with XNNPACK for executorch, the LiteRT
interpreter for litert), median of --runs after one warm-up. Fidelity: rel L2 of the logits and seg
agreement (argmax) against torch fp32 on --eval verification inputs (seeds 10..); "verified at
export" is the manifest's own check against the torch model the artifact came from. Quantized rows
calibrate on synthetic inputs (seeds 100..). --group-size/--scale-method set the int4 recipe and
--float-storage fp16 stores what quantized rows keep float (head, patch embedding, norms) as float16
(a size-bound recipe; artifacts and cached models are named by these settings).

    python benchmarks/bench_mobile.py --arch 0.1b --size 512x384 --rows executorch:fp32,executorch:int4-weight
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FORMATS = ("ort", "executorch", "litert")
SCHEMES = ("fp32", "fp16", "int8-weight", "int4-weight", "int8", "int8-static")
DEFAULT_ROWS = ("executorch:fp32,executorch:fp16,executorch:int8,executorch:int4-weight,ort:fp32,ort:int8-weight,"
                "ort:int4-weight,ort:int8,litert:fp32,litert:fp16,litert:int8-weight")


def _inputs(a, seeds) -> list[np.ndarray]:
    from sapiens2_edge.artifact import verification_inputs

    return [verification_inputs(a.size, batch=1, seed=s) for s in seeds]


def _model(a):
    from sapiens2_edge.models.model import build_model

    return build_model(a.arch, "seg", input_size=a.size, seed=0).eval()


def variant(scheme: str, a) -> str:
    """``scheme`` plus the recipe settings that change a quantized row (used in file names)."""
    if scheme in ("fp32", "fp16"):
        return scheme
    tag = f"{scheme}-g{a.group_size}-{a.scale_method}" if scheme == "int4-weight" else scheme
    return tag + ("-f16store" if a.float_storage == "fp16" else "")


def _quantized(model, scheme: str, a):
    """The scheme's QuantizedModel, quantized once per run and shared by every format (saved under --work)."""
    import torch

    import sapiens2_edge as s2e
    from sapiens2_edge.quantization import Int4Weight, load_quantized, save_quantized

    path = a.work / f"q-{a.arch}-{a.size[0]}x{a.size[1]}-{variant(scheme, a)}.safetensors"
    if path.exists():
        return load_quantized(path)
    static = scheme == "int8-static"
    calib = [torch.from_numpy(x) for x in _inputs(a, range(100, 104))] if static else None
    config = Int4Weight(a.group_size, a.scale_method) if scheme == "int4-weight" else "int8" if static else scheme
    q, _ = s2e.quantize(model, config, calibration=calib, progress=False, float_storage=a.float_storage,
                        **({"activation_mode": "static"} if static else {}))
    save_quantized(q, path)
    return q


def _artifact(row: str, a) -> Path:
    fmt, scheme = row.split(":")
    return a.work / f"{a.arch}-{a.size[0]}x{a.size[1]}-{fmt}-{variant(scheme, a)}"


def _outputs(row: str, a) -> Path:
    """Where a row's outputs on the evaluation inputs are saved."""
    name = f"{a.arch}-{a.size[0]}x{a.size[1]}-torch-fp32" if row == "torch:fp32" else _artifact(row, a).name
    return a.work / f"out-{name}.npy"


def export_row(row: str, a) -> dict:

    import sapiens2_edge as s2e

    fmt, scheme = row.split(":")
    out = _artifact(row, a)
    if (out / "manifest.json").exists():
        return {"export_s": None}
    model, kw = _model(a), {"precision": scheme}
    t = time.perf_counter()
    if scheme not in ("fp32", "fp16"):
        model, kw = _quantized(model, scheme, a), {}
    s2e.export(model, out, format=fmt, input_size=a.size, max_batch=1, overwrite=True, **kw)
    return {"export_s": time.perf_counter() - t}


def time_row(row: str, a) -> dict:
    import torch

    from sapiens2_edge.bench import peak_rss_mb
    from sapiens2_edge.exporters import read_manifest, torch_outputs
    from sapiens2_edge.runtime.opener import open_artifact

    xs = _inputs(a, range(10, 10 + a.eval))
    if row == "torch:fp32":
        model = _model(a)
        run, what, size, verified = (lambda x: torch_outputs(model, x)[0]), f"torch {torch.__version__} eager", \
            sum(t.numel() * t.element_size() for t in model.state_dict().values()), None
    else:
        root = _artifact(row, a)
        manifest, runner, _ = open_artifact(root)
        run, what = (lambda x: runner(x)[0]), runner.describe()
        size = sum(f["size"] for f in read_manifest(root).files.values() if f["role"] != "reference")
        verified = [manifest.fidelity["rel_l2"], manifest.fidelity["tolerance"]]
    np.save(_outputs(row, a),
            np.concatenate([run(x) for x in xs]))
    run(xs[0])  # warm-up
    times = []
    for _ in range(a.runs):
        t = time.perf_counter()
        run(xs[0])
        times.append(time.perf_counter() - t)
    return {"what": what, "median_s": statistics.median(times), "size_mb": size / 1e6, "peak_rss_mb": peak_rss_mb(),
            "verified": verified}


def child(mode: str, row: str, a) -> tuple[dict | None, str]:
    cmd = [sys.executable, __file__, "--arch", a.arch, "--size", f"{a.size[0]}x{a.size[1]}", "--work", str(a.work),
           "--runs", str(a.runs), "--eval", str(a.eval), "--group-size", str(a.group_size), "--scale-method",
           a.scale_method, "--float-storage", a.float_storage, f"--{mode}", row]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        killed = proc.returncode in (-9, 137) or "MemoryError" in tail
        return None, "out of memory (killed)" if killed else f"failed: {tail[:160]}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


def fidelity(row: str, a) -> tuple[float, float]:
    ref = np.load(_outputs("torch:fp32", a)).astype(np.float64)
    got = np.load(_outputs(row, a))
    return float(np.linalg.norm(ref - got) / np.linalg.norm(ref)), float((ref.argmax(1) == got.argmax(1)).mean())


def report(results: list[dict], a, load, command: str) -> str:
    base = next((r["median_s"] for r in results if r["row"] == "torch:fp32" and "median_s" in r), None)
    lines = [f"{date.today()}, {platform.machine()}, {os.cpu_count()} cores; load average (1 min) "
             f"{load[0]:.2f} at the start, {load[1]:.2f} at the end.", "", f"`{command}`", "",
             f"| {a.arch} seg {a.size[0]}x{a.size[1]} | runs as | file (MB) | export (s) | latency median (s) | "
             "vs torch fp32 | peak RSS (MB) | rel L2 vs fp32 | seg agreement | verified at export (rel L2 / tol) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        fmt, scheme = r["row"].split(":")
        label = f"{fmt}:{variant(scheme, a)}" if fmt != "torch" else r["row"]
        if "error" in r:
            lines.append(f"| {label} | {r['error']} | | | | | | | | |")
            continue
        exp = "-" if r.get("export_s") is None else f"{r['export_s']:.0f}"
        ratio = f"{base / r['median_s']:.2f}x" if base else "-"
        ver = "-" if r["verified"] is None else f"{r['verified'][0]:.2e} / {r['verified'][1]:g}"
        lines.append(f"| {label} | {r['what']} | {r['size_mb']:.1f} | {exp} | {r['median_s']:.3f} | {ratio} | "
                     f"{r['peak_rss_mb']:.0f} | {r['rel_l2']:.2e} | {100 * r['seg_agreement']:.2f} % | {ver} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="0.1b")
    p.add_argument("--size", default="512x384")
    p.add_argument("--rows", default=DEFAULT_ROWS, help="comma-separated FORMAT:SCHEME")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--eval", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_mobile"))
    p.add_argument("--group-size", type=int, default=32, help="int4-weight group size")
    p.add_argument("--scale-method", default="mse", choices=("mse", "absmax"), help="int4-weight scales")
    p.add_argument("--float-storage", default="fp32", choices=("fp32", "fp16"),
                   help="quantized rows: store the tensors that stay float as float16")
    p.add_argument("--export", help=argparse.SUPPRESS)
    p.add_argument("--time", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.size = tuple(int(v) for v in a.size.split("x"))
    a.work.mkdir(parents=True, exist_ok=True)
    if a.export or a.time:
        print(json.dumps(export_row(a.export, a) if a.export else time_row(a.time, a)))
        return
    rows = [r.strip() for r in a.rows.split(",") if r.strip() != "torch:fp32"]
    bad = [r for r in rows if r.count(":") != 1 or r.split(":")[0] not in FORMATS or r.split(":")[1] not in SCHEMES]
    if bad:
        p.error(f"unknown rows {bad}; expected FORMAT:SCHEME with FORMAT in {FORMATS} and SCHEME in {SCHEMES}")
    load = [os.getloadavg()[0]]
    results = []
    for row in ["torch:fp32", *rows]:
        made, err = ({"export_s": None}, "") if row == "torch:fp32" else child("export", row, a)
        res, err = (None, err) if err else child("time", row, a)
        if res:
            res.update(made, row=row)
            res["rel_l2"], res["seg_agreement"] = fidelity(row, a)
        results.append(res or {"row": row, "error": err})
        print(row, json.dumps(results[-1]), flush=True)
    load.append(os.getloadavg()[0])
    print(report(results, a, load, " ".join(["python", "benchmarks/bench_mobile.py", *(argv or sys.argv[1:])])))


if __name__ == "__main__":
    main()
