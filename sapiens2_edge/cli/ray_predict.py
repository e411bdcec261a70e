"""``sapiens2-edge predict ... --ray``: the scale-out path of ``predict`` (a folder or glob of
images and videos through :func:`sapiens2_edge.scale.predict_dataset` on a Ray cluster; Parquet
rows out, resumable), with the checks of its option combinations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import typer

from ..errors import ConfigError


def check_options(ray: bool, address: Optional[str], concurrency: Optional[int], gpus: Optional[float]) -> None:
    """Cluster options without ``--ray`` are a mistake (they would silently do nothing)."""
    if ray:
        return
    given = [name for name, v in (("--address", address), ("--concurrency", concurrency), ("--gpus-per-actor", gpus))
             if v is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} configure the Ray path; add --ray (or drop them)")


def run_ray(checkpoint: str, input: Optional[str], output: Path, camera: Optional[int], boxes: Optional[Path],
            skip_errors: bool, detector: Optional[str], address: Optional[str], concurrency: Optional[int],
            gpus: Optional[float], backend: str, device: str, input_size: Optional[tuple[int, int]], flip: bool,
            as_json: bool, say: Callable[[str], None], precision: Optional[str] = None) -> int:
    """Run ``predict --ray``; returns the exit code (1 when nothing was written and something failed)."""
    if camera is not None or input is None:
        raise ConfigError("--ray predicts files (a folder, a glob or a video file); a camera runs without --ray")
    if boxes is not None:
        raise ConfigError("--boxes is not read on the Ray path; use --detector to find the people")
    if not skip_errors:
        raise ConfigError("--fail-fast does not apply to --ray: every failure is recorded as a row and the run "
                          "goes on (see the summary)")
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"--concurrency must be a positive integer, got {concurrency}")
    from ..scale import predict_dataset

    detector = None if detector is None or detector.lower() == "none" else detector  # .onnx: opened per actor
    summary = predict_dataset(input, checkpoint, output, detector=detector, concurrency=concurrency or 1,
                              num_gpus_per_actor=gpus or 0, backend=backend, device=device, input_size=input_size,
                              flip_test=flip, address=address, progress=not as_json, precision=precision)
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=1))
    else:
        for line in summary.lines():
            say(line)
    return 1 if summary.failures and not summary.ok else 0
