"""Scale-out overhead: the Ray Data path (``sapiens2_edge.scale.predict_dataset``) against the
single-process Predictor on the same images, on this machine (a local Ray cluster).

Rows: the plain Predictor loop (load, then ``pred(chunk)`` per ``--batch-size`` paths: what a user
would otherwise write), the same work through ``BatchPredictor`` in this process writing one
Parquet file (the SDK's per-worker work without Ray), then ``predict_dataset`` with 1 actor x all
CPUs and N actors x 1 CPU. Every wall time includes the model load (once per actor on Ray) and,
on Ray, actor start, decoding, prediction and the Parquet writes; ``ray.init`` is timed apart and
runs first, so every row runs beside the same idle Ray processes. ``--rounds`` interleave the rows
(a busy neighbour then hits all of them); the table keeps each row's best round and lists all.
Random weights (speed only); a native artifact is exported once into --workdir.

    python benchmarks/bench_scale.py --arch 0.1b --size 256x192 --images 12 --batch-size 4 --rounds 2
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository, when not installed


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def make_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` 640x480 JPEGs: smooth gradients with noise (photo-like sizes, not pure noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    for i in range(count):
        base = np.stack([xx / 640 * 255, yy / 480 * 255, (xx + yy) / 1120 * 255], -1) * rng.uniform(0.3, 1.0, 3)
        img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"img{i:04d}.jpg"), img)
    return sorted(str(p) for p in folder.glob("*.jpg"))


def export_artifact(arch: str, task: str, size: tuple[int, int], batch: int, workdir: Path) -> str:
    out = workdir / f"{task}-{arch}-{size[0]}x{size[1]}-native-b{batch}"
    if not (out / "manifest.json").is_file():
        import sapiens2_edge as s2e
        from sapiens2_edge.models.model import build_model

        if arch == "tiny":  # the tests' tiny model (a quick try of this script): --size 128x96
            from tests.fixtures.tiny import tiny_model

            model = tiny_model(task)
        else:
            model = build_model(arch, task, input_size=size)
        s2e.export(model, out, format="native", input_size=size, max_batch=batch)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="0.1b")
    ap.add_argument("--task", default="seg")
    ap.add_argument("--size", default="512x384")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_scale"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    cpus = os.cpu_count() or 1
    art = export_artifact(args.arch, args.task, size, args.batch_size, args.workdir)
    paths = make_images(args.workdir / f"images{args.images}", args.images)
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    import sapiens2_edge as s2e
    from sapiens2_edge.scale import BatchPredictor, PredictorFactory, predict_dataset
    from sapiens2_edge.scale.encode import to_arrow

    t = time.perf_counter()  # started first, so every row runs beside an idle Ray (raylet, GCS)
    ray.init(address="local", num_cpus=cpus, object_store_memory=200 * 2**20, include_dashboard=False,
             logging_level=logging.WARNING)
    init_s = time.perf_counter() - t

    def predictor_loop() -> str:
        pred = s2e.Predictor(art)
        for i in range(0, len(paths), args.batch_size):
            pred(paths[i:i + args.batch_size])
        return f"{pred.backend}, load included"

    def batch_predictor() -> str:
        udf = BatchPredictor(PredictorFactory(art, batch_size=args.batch_size))
        tables = [to_arrow(udf.task, chunk) for chunk in udf.predict_rows({"path": np.array(paths)})]
        pq.write_table(pa.concat_tables(tables), args.workdir / "single.parquet")
        return "decode, predict, encode, write"

    def on_ray(actors: int):
        def run() -> str:
            out = args.workdir / f"ray-{actors}"
            shutil.rmtree(out, ignore_errors=True)
            s = predict_dataset(paths, art, out, batch_size=args.batch_size, concurrency=actors,
                                num_cpus_per_actor=cpus / actors, progress=False)
            per_actor = ", ".join(f"{n / b:.2f}" for n, b in s.workers.values())
            return f"{s.ok} ok, {len(s.failures)} failed; busy rows/s per actor: {per_actor}"
        return run

    paths_to_run = [("single process: Predictor loop", predictor_loop),
                    ("single process: BatchPredictor + Parquet", batch_predictor)]
    paths_to_run += [(f"Ray: {a} actor(s) x {cpus / a:g} CPU", on_ray(a)) for a in sorted({1, cpus})]
    times: dict[str, list[float]] = {name: [] for name, _ in paths_to_run}
    notes: dict[str, str] = {}
    loads: dict[str, list[str]] = {name: [] for name, _ in paths_to_run}
    for _ in range(args.rounds):  # rounds interleave the paths: a busy neighbour hits all of them
        for name, fn in paths_to_run:
            t = time.perf_counter()
            notes[name] = fn()
            times[name].append(time.perf_counter() - t)
            loads[name].append(load())
    ray.shutdown()
    rows = [(name, min(times[name]), f"{notes[name]}; every round: "
             + ", ".join(f"{v:.1f}" for v in times[name]) + " s", " ; ".join(loads[name])) for name, _ in paths_to_run]

    base = rows[0][1]
    lines = [f"`python benchmarks/bench_scale.py --arch {args.arch} --task {args.task} --size {args.size} "
             f"--images {args.images} --batch-size {args.batch_size} --rounds {args.rounds}`", "",
             f"{len(paths)} images 640x480 JPEG, {args.arch} {args.task} {size[0]}x{size[1]} native fp32 artifact "
             f"(random weights), {cpus} CPUs; ray.init: {init_s:.1f} s (not in the rows)", "",
             "| path | best wall (s) | images/s | overhead vs Predictor loop | notes | load avg after each round (1/5/15 min) |",
             "|---|---|---|---|---|---|"]
    for name, secs, note, la in rows:
        lines.append(f"| {name} | {secs:.1f} | {len(paths) / secs:.2f} | {secs / base:.2f}x | {note} | {la} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
