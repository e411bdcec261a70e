"""The dense heads' upsampling 3x3 convolutions in int8 (recipe ``head="int8"``) against the same int8 OpenVINO
artifact with its head in float: latency (the artifacts' calls in turn, in one process, compiled as the
runtime compiles them), size, and fidelity against torch fp32 eager on the same inputs (rel L2 of the
dense output; mean angle between unit normals for normal; PSNR for albedo; the scale's relative error
for pointmap). Random weights (``build_model(..., seed=0)``), the peers benchmark's synthetic inputs.

    python benchmarks/dense_head_int8.py --arch 0.4b --task normal --size 1024x768 --calib 8 --work /tmp/dense04

Both artifacts quantize the backbone alike (int8 static activations, int8 attention inputs, the same
calibration images); they differ in the head only. Artifacts already in --work are reused.
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

from task_metrics import METRIC, task_metric  # noqa: E402 - the benchmarks' folder, inserted above

HEADS = ("float", "int8")


def build(a, work: Path) -> None:
    import torch
    from bench_cpu_peers import inputs

    import sapiens2_edge as s2e
    from sapiens2_edge.models.model import build_model

    missing = [h for h in HEADS if not (work / f"ov-int8-head-{h}" / "manifest.json").exists()]
    if not missing:
        return
    model = build_model(a.arch, a.task, input_size=a.size, seed=0)
    calib = [torch.from_numpy(x) for x in inputs(a.size, range(1000, 1000 + a.calib))]
    for head in missing:
        t = time.perf_counter()
        q, _ = s2e.quantize(model, "int8", calibration=calib, input_size=a.size, activation_mode="static",
                            attention="int8", head=head, report_samples=1, progress=False)
        tq = time.perf_counter() - t
        s2e.export(q, work / f"ov-int8-head-{head}", format="openvino", input_size=a.size, max_batch=1,
                   float_model=model)
        print(f"head {head}: quantize {tq:.1f} s, quantize + export {time.perf_counter() - t:.1f} s", flush=True)
        del q


def reference(a, work: Path, xs) -> list[np.ndarray]:
    """torch fp32 eager's outputs (dense, then scale for pointmap) on the evaluation inputs, cached."""
    path = work / f"ref-{a.eval}.npz"
    if not path.exists():
        import torch

        from sapiens2_edge.models.model import build_model

        model = build_model(a.arch, a.task, input_size=a.size, seed=0).eval()
        outs = []
        with torch.no_grad():
            for x in xs:
                o = model(torch.from_numpy(x))
                outs.append([t.numpy() for t in (o if isinstance(o, tuple) else (o,))])
        np.savez(path, *[np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))])
    with np.load(path) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def fidelity(task: str, ref: list[np.ndarray], got: list[np.ndarray], size) -> dict[str, float]:
    r, g = ref[0].astype(np.float64), got[0].astype(np.float64)
    out = {"rel L2": float(np.linalg.norm(r - g) / np.linalg.norm(r))}
    if METRIC[task]:
        out[METRIC[task]] = task_metric(task, ref[0], got[0], size)
    if task == "pointmap":
        out["scale rel err"] = float(np.abs(ref[1] - got[1]).mean() / np.abs(ref[1]).mean())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="0.4b")
    p.add_argument("--task", default="normal", choices=("normal", "pointmap", "albedo"))
    p.add_argument("--size", default="1024x768")
    p.add_argument("--calib", type=int, default=8)
    p.add_argument("--eval", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--work", type=Path, default=Path("/tmp/dense_head_int8"))
    a = p.parse_args()
    a.size = tuple(int(v) for v in a.size.split("x"))
    a.work.mkdir(parents=True, exist_ok=True)
    from bench_cpu_peers import inputs

    from sapiens2_edge.runtime import open_artifact

    build(a, a.work)
    xs = inputs(a.size, range(a.eval))
    ref = reference(a, a.work, xs)
    runs = {}
    for head in HEADS:
        info, run, _ = open_artifact(a.work / f"ov-int8-head-{head}", "openvino")
        got = [run(x) for x in xs]
        runs[head] = (run, [np.concatenate([g[i] for g in got]) for i in range(len(got[0]))], info)
    times: dict[str, list[float]] = {h: [] for h in HEADS}
    for _ in range(a.runs):  # in turn: the machine's drift falls on both alike
        for head in HEADS:
            t = time.perf_counter()
            runs[head][0](xs[0])
            times[head].append(time.perf_counter() - t)
    base = float(np.median(times["float"]))
    print(f"{a.arch} {a.task} {a.size[0]}x{a.size[1]}, {a.calib} calibration images, {a.eval} evaluation inputs, "
          f"{a.runs} calls each in turn")
    print("| head | median (s) | vs float head | size (MB) | " + " | ".join(fidelity(a.task, ref, ref, a.size)) + " |")
    print("|---|---|---|---|" + "---|" * len(fidelity(a.task, ref, ref, a.size)))
    for head in HEADS:
        med = float(np.median(times[head]))
        size = sum(f.stat().st_size for f in (a.work / f"ov-int8-head-{head}").rglob("*") if f.is_file()) / 1e6
        fid = fidelity(a.task, ref, runs[head][1], a.size)
        print(f"| {head} | {med:.3f} | {base / med:.2f}x | {size:.1f} | "
              + " | ".join(f"{v:.4g}" for v in fid.values()) + " |")


if __name__ == "__main__":
    main()
