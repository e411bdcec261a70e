"""The native engine's float32 head layers direct against Winograd, on one artifact in one process.

One engine per algorithm ($S2E_NATIVE_CONV3X3 for the dense heads' 3x3 convolutions, $S2E_NATIVE_DECONV for
the pose / seg heads' transposed convolutions: "direct", "auto", "winograd"), their calls interleaved after
one warm call each, so that drift on a shared machine falls on every algorithm alike. Prints each one's
median and minimum, the speed-up over the first, rel L2 against the torch float model on the same input
and the bytes the engine keeps between runs. Random weights (speed only); the artifact and the torch
reference are cached under --work.

    python benchmarks/native_head_algorithms.py --arch 0.1b --task seg --size 512x384 --runs 6
    python benchmarks/native_head_algorithms.py --arch 0.4b --task pose --size 1024x768 --runs 2 \\
        --algorithms direct,auto
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sapiens2_edge.exporters import export, verification_inputs  # noqa: E402
from sapiens2_edge.runtime.native_backend import DENSE_3X3_TASKS, NativeBackend  # noqa: E402


def prepare(arch: str, task: str, size: tuple[int, int], work: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The native fp32 artifact, one input and the torch model's output on it (built once, then read)."""
    root = work / f"{arch}-{task}-{size[0]}x{size[1]}"
    ref_path = work / f"{root.name}.ref.npy"
    x = verification_inputs(size, batch=1, seed=3)
    if not (root / "manifest.json").is_file() or not ref_path.is_file():
        import torch

        from sapiens2_edge.models.model import build_model

        model = build_model(arch, task, seed=0, input_size=size)
        if not (root / "manifest.json").is_file():
            export(model, root, format="native", input_size=size, verify=False, overwrite=True)
        with torch.inference_mode():
            out = model(torch.from_numpy(x))
        np.save(ref_path, (out[0] if isinstance(out, tuple) else out).numpy())
    return root, x, np.load(ref_path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="0.1b")
    ap.add_argument("--task", default="seg")
    ap.add_argument("--size", default="512x384", help="HxW")
    ap.add_argument("--runs", type=int, default=4, help="timed calls per algorithm, after one warm call")
    ap.add_argument("--algorithms", default="direct,auto,winograd")
    ap.add_argument("--work", type=Path, default=Path("/tmp/s2e-head-algorithms"))
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    algorithms = args.algorithms.split(",")
    root, x, ref = prepare(args.arch, args.task, size, args.work)
    variable = "S2E_NATIVE_CONV3X3" if args.task in DENSE_3X3_TASKS else "S2E_NATIVE_DECONV"
    os.environ["S2E_NATIVE_FP32_GEMM"] = "onednn"
    engines = {}
    for a in algorithms:
        os.environ[variable] = a
        engines[a] = NativeBackend(root)
    outs = {a: engines[a](x)[0] for a in algorithms}  # the warm calls (the kept buffers' first sizes)
    times: dict[str, list[float]] = {a: [] for a in algorithms}
    for _ in range(args.runs):
        for a in algorithms:
            t = time.perf_counter()
            engines[a](x)
            times[a].append(time.perf_counter() - t)
    print(f"{args.arch} {args.task} {size[0]}x{size[1]}, {variable}, {args.runs} interleaved calls each")
    base = statistics.median(times[algorithms[0]])
    for a in algorithms:
        med = statistics.median(times[a])
        rel = np.linalg.norm(outs[a].astype(np.float64) - ref) / np.linalg.norm(ref)
        print(f"{a:9s} median {med:.3f} s  min {min(times[a]):.3f} s  vs {algorithms[0]} {base / med:.2f}x  "
              f"rel L2 vs torch {rel:.2e}  kept {engines[a].engine.kept_bytes / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
