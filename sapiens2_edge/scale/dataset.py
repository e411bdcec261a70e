"""``predict_dataset``: every image and video frame of a source through the Predictor on a Ray
cluster, one Parquet row each, resumable.

Why paths and not Ray's ``read_images`` / ``read_videos``: the rows must equal the single-process
Predictor's bit for bit, and Ray's readers decode with PIL / decord (other decoders, other pixels,
and decord is one more dependency); a corrupt file in ``read_images`` fails its read task (the job
stops) where it must become an error row; and resuming filters paths before anything is read. So
the dataset holds paths (tiny rows, cheap to shard), each actor decodes its own with the SDK's
OpenCV readers, and a video expands into its frames inside the actor (read once, in order).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailableError, ConfigError
from ..runtime.inputs import is_video
from .batch import PredictorFactory, RayBatchPredictor
from .sources import list_inputs, plan, written_keys

log = logging.getLogger("sapiens2_edge")


def import_ray():
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BackendUnavailableError("scale-out prediction needs Ray Data: pip install 'sapiens2-edge[ray]'") from None
    return ray


@dataclass
class Summary:
    """What a run did: ``inputs`` (files found), ``skipped`` (already written), ``rows`` written
    by this run (``ok`` + failures), ``seconds`` (wall), ``workers`` {name: (rows, busy seconds)},
    ``failures`` [(path, frame, error)], ``duplicates`` (rows whose (path, frame) this run wrote
    twice: possible when Ray retries a task after a worker died mid-way; readers keep one)."""

    output: str
    inputs: int
    skipped: int
    rows: int = 0
    ok: int = 0
    seconds: float = 0.0
    workers: dict[str, tuple[int, float]] = field(default_factory=dict)
    failures: list[tuple[str, int, str]] = field(default_factory=list)
    duplicates: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "inputs": self.inputs, "skipped": self.skipped, "rows": self.rows,
                "ok": self.ok, "failed": len(self.failures), "duplicates": self.duplicates, "seconds": self.seconds, "rows_per_s": self.rows_per_s,
                "workers": {k: {"rows": n, "busy_s": s, "rows_per_s": n / s if s > 0 else 0.0}
                            for k, (n, s) in self.workers.items()},
                "failures": [{"path": p, "frame": f, "error": e} for p, f, e in self.failures]}

    def lines(self) -> list[str]:
        out = [f"{self.rows} row(s) written ({self.ok} ok, {len(self.failures)} failed) in {self.seconds:.1f} s: "
               f"{self.rows_per_s:.2f} rows/s; {self.skipped} input(s) already written were skipped; "
               f"results in {self.output}"]
        for name, (n, s) in sorted(self.workers.items()):
            out.append(f"  {name}: {n} row(s), {n / s if s > 0 else 0.0:.2f} rows/s while predicting ({s:.1f} s busy)")
        if self.duplicates:
            out.append(f"  {self.duplicates} row(s) written twice (a task retried after a worker died)")
        out += [f"  failed: {p} frame {f}: {e}" for p, f, e in self.failures]
        return out


def _summarise(summary: Summary, files: list[Path]) -> Summary:
    import pyarrow.parquet as pq

    seen: set[tuple[str, int]] = set()
    for file in files:
        table = pq.read_table(file, columns=["path", "frame", "error", "worker", "seconds"]).to_pydict()
        for path, frame, error, worker, seconds in zip(*table.values(), strict=True):
            summary.duplicates += (path, frame) in seen
            seen.add((path, frame))
            summary.rows += 1
            n, s = summary.workers.get(worker, (0, 0.0))
            summary.workers[worker] = (n + 1, s + seconds)
            if error:
                summary.failures.append((path, frame, error))
            else:
                summary.ok += 1
    summary.failures.sort()
    return summary


def predict_dataset(source: Any, artifact: str | os.PathLike, output: str | os.PathLike, *, task: str | None = None,
                    detector: Any = None, batch_size: int = 8, concurrency: int = 1, num_gpus_per_actor: float = 0,
                    num_cpus_per_actor: float = 1, backend: str = "auto", device: str = "auto",
                    input_size: tuple[int, int] | None = None, flip_test: bool = True, address: str | None = None,
                    rows_per_block: int | None = None, progress: bool = True, precision: str | None = None) -> Summary:
    """Predict every image and video frame of ``source`` (a folder, a glob, files, or a list) with
    ``artifact`` (an artifact directory or checkpoint) on Ray, writing Parquet rows to ``output``
    (columns: :mod:`sapiens2_edge.scale.encode`).

    Resumable: inputs already in ``output`` (failed ones included) are skipped; a video's written
    frames are read but not predicted again. ``concurrency`` actors each load the model once and
    take ``num_gpus_per_actor`` GPUs (fractions share one) and ``num_cpus_per_actor`` CPUs.
    ``address``: a running cluster ("auto", "ray://host:10001"); None: the one this process is
    connected to, else a new local one. ``rows_per_block``: image paths per actor call (default:
    a few batches, at least 4 calls per actor); a video is always one call. ``progress``: Ray
    Data's progress bars. ``precision``: how torch runs a checkpoint (fp32, bf16, auto; see the
    Predictor). Returns a :class:`Summary` of this run.
    """
    ray = import_ray()
    for name, value in (("concurrency", concurrency), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if num_gpus_per_actor < 0 or num_cpus_per_actor < 0:
        raise ConfigError("num_gpus_per_actor and num_cpus_per_actor must be >= 0")
    factory = PredictorFactory(os.fspath(artifact), task=task, detector=detector, backend=backend, device=device,
                               input_size=None if input_size is None else tuple(input_size), flip_test=flip_test,
                               batch_size=batch_size, precision=precision)
    start = time.perf_counter()
    inputs = list_inputs(source)
    out = Path(output)
    before = set(out.rglob("*.parquet")) if out.exists() else set()
    rows, skipped = plan(inputs, written_keys(out))
    before = {p for p in before if p.exists()}  # minus any renamed *.partial
    summary = Summary(str(out), len(inputs), skipped)
    if not rows:
        summary.seconds = time.perf_counter() - start
        return summary
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    elif address is not None:
        log.info("sapiens2_edge: Ray is already initialised in this process; address=%s is not used", address)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    # One block = one actor call: images in blocks of a few Predictor batches (at least 4 blocks per
    # actor to balance the pool), each video a block of its own (its frames are read in order).
    images = [r for r in rows if not is_video(r["path"])]
    videos = [r for r in rows if is_video(r["path"])]
    per_block = rows_per_block or max(1, min(batch_size * 4, math.ceil(len(images) / (4 * concurrency))))
    parts = ([ray.data.from_items(images, override_num_blocks=math.ceil(len(images) / per_block))] if images else []) \
        + ([ray.data.from_items(videos, override_num_blocks=len(videos))] if videos else [])
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    ds = ds.map_batches(RayBatchPredictor, fn_constructor_args=(factory,), batch_size=None,
                        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=concurrency),
                        num_gpus=num_gpus_per_actor, num_cpus=num_cpus_per_actor)
    out.mkdir(parents=True, exist_ok=True)
    # Writes take no CPU slot: with every CPU held by actors they still run as rows come out (a
    # killed job keeps what was written; the object store does not fill up).
    ds.write_parquet(str(out), ray_remote_args={"num_cpus": 0})
    summary.seconds = time.perf_counter() - start
    return _summarise(summary, sorted(set(out.rglob("*.parquet")) - before))


__all__ = ["PredictorFactory", "Summary", "import_ray", "predict_dataset"]
