"""The batch callable the data engines call: a picklable :class:`PredictorFactory` (what to open)
and :class:`BatchPredictor` (opens it once per worker; a dict of numpy arrays in, one row per image
or video frame out).

Input columns (any one batch, numpy arrays of equal length):

* ``image``: decoded images (H, W, 3) RGB uint8 (an object array or a stacked 4-D array), or
* ``path``: image or video files, decoded in the worker by the SDK's own readers (OpenCV, as the
  single-process ``Predictor`` reads them). A video expands into one row per frame.
* optional ``frame`` (int, kept on image rows, default 0) and ``skip_frames`` (per video: frame
  indices already written, read but not predicted).

A row that fails (an unreadable file, a refused image) becomes a row whose ``error`` says why;
the batch goes on. Outputs are the columns of :mod:`.encode`.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ConfigError
from ..runtime.inputs import is_video
from ..runtime.predictor import check_precision_target
from ..tasks.image import load_image
from .encode import encode_result, error_row, to_arrow, to_numpy


@dataclass(frozen=True)
class PredictorFactory:
    """Everything needed to open a :class:`~sapiens2_edge.runtime.predictor.Predictor` in another
    process: plain values (plus a picklable detector object if you pass one), so it pickles with
    the standard library and travels to Ray actors, Spark executors or Beam workers.

    ``model``: an artifact directory or a checkpoint (a checkpoint needs torch on the workers).
    ``detector`` (pose): an RTMDet-m ``.safetensors`` path, an exported ``.onnx`` path (run by
    onnxruntime, RTMDet outputs) or a picklable callable image -> boxes; None: the whole image.
    ``batch_size``: images per Predictor call in a worker (pose: crops per backend call follow
    the artifact's limit). ``precision``: how torch runs a checkpoint (see the Predictor).
    """

    model: str
    task: str | None = None
    detector: Any = None
    backend: str = "auto"
    device: str = "auto"
    input_size: tuple[int, int] | None = None
    flip_test: bool = True
    batch_size: int = 8
    precision: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        object.__setattr__(self, "model", os.fspath(self.model) if isinstance(self.model, os.PathLike) else self.model)
        if not isinstance(self.model, str):
            raise ConfigError(f"the model of a PredictorFactory must be an artifact directory or checkpoint path "
                              f"(it is opened again in every worker), got {type(self.model).__name__}")
        check_precision_target(self.model, self.precision)  # here, not in every worker

    def open_detector(self) -> Any:
        spec = self.detector
        if isinstance(spec, (str, os.PathLike)) and str(spec).lower().endswith(".onnx"):
            from ..runtime.detectors import OnnxDetector

            return OnnxDetector(spec)
        return os.fspath(spec) if isinstance(spec, os.PathLike) else spec

    def __call__(self):
        """The Predictor (opened here: call it in the worker)."""
        from ..runtime.predictor import Predictor

        return Predictor(self.model, backend=self.backend, task=self.task, device=self.device,
                         input_size=self.input_size, flip_test=self.flip_test, detector=self.open_detector(),
                         precision=self.precision)


def _column(batch: dict[str, Any], name: str, n: int) -> list[Any] | None:
    value = batch.get(name)
    if value is None:
        return None
    if len(value) != n:
        raise ConfigError(f"batch column {name!r} has {len(value)} rows, the batch {n}")
    return list(value)


def iter_inputs(batch: dict[str, Any]) -> Iterator[tuple[str, int, Any]]:
    """(path, frame, RGB image or the exception that refused it) for every image / frame of a batch."""
    n = len(next(iter(batch.values()))) if batch else 0
    images, paths = _column(batch, "image", n), _column(batch, "path", n)
    frames, skips = _column(batch, "frame", n), _column(batch, "skip_frames", n)
    if images is None and paths is None:
        raise ConfigError(f"a batch needs an 'image' or a 'path' column, got {sorted(batch)}")
    for i in range(n):
        path = "" if paths is None else str(paths[i])
        frame = 0 if frames is None else int(frames[i])
        if images is None and is_video(path):
            skip = set() if skips is None or skips[i] is None else {int(f) for f in skips[i]}
            yield from _video_frames(path, skip)
            continue
        try:
            yield path, frame, load_image(images[i] if images is not None else Path(path))
        except Exception as e:  # noqa: BLE001 - any unreadable input becomes its error row
            yield path, frame, e


def _video_frames(path: str, skip: set[int]) -> Iterator[tuple[str, int, Any]]:
    from ..runtime.stream import FrameSource

    try:
        source = FrameSource(path)
    except Exception as e:  # noqa: BLE001 - a video that does not open is one error row (frame 0)
        yield path, 0, e
        return
    try:
        index = 0
        while (frame := source.read()) is not None:
            if index not in skip:
                yield path, index, frame
            index += 1
    finally:
        source.close()


def _worker_name() -> str:
    try:
        import ray

        if ray.is_initialized():
            actor = ray.get_runtime_context().get_actor_id()
            if actor:
                return f"actor-{actor[:8]}@{socket.gethostname()}"
    except ImportError:
        pass
    return f"pid{os.getpid()}@{socket.gethostname()}"


class BatchPredictor:
    """A callable class for ``map_batches`` (Ray Data), ``predict_batch_udf`` (Spark) or a Beam
    ``ModelHandler``: built once per worker from a :class:`PredictorFactory`, then
    ``__call__(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` (see the module docstring)."""

    def __init__(self, factory: PredictorFactory) -> None:
        self.factory = factory
        self.predictor = factory()
        self.task = self.predictor.task
        self.worker = _worker_name()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return to_numpy(self.task, [r for chunk in self.predict_rows(batch) for r in chunk])

    def predict_rows(self, batch: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        """Rows in chunks of at most ``factory.batch_size`` images, each chunk one Predictor call."""
        chunk: list[tuple[str, int, Any]] = []
        for item in iter_inputs(batch):
            chunk.append(item)
            if len(chunk) == self.factory.batch_size:
                yield self._predict(chunk)
                chunk = []
        if chunk:
            yield self._predict(chunk)

    def _predict(self, chunk: list[tuple[str, int, Any]]) -> list[dict[str, Any]]:
        start = time.perf_counter()
        good = [i for i, (_, _, im) in enumerate(chunk) if not isinstance(im, BaseException)]
        rows: dict[int, dict[str, Any]] = {}
        try:
            results = self.predictor([chunk[i][2] for i in good]) if good else []
            rows.update((i, encode_result(self.task, r)) for i, r in zip(good, results, strict=True))
        except Exception:  # noqa: BLE001 - one refused image must not sink the others: one by one
            for i in good:
                try:
                    rows[i] = encode_result(self.task, self.predictor(chunk[i][2]))
                except Exception as e:  # noqa: BLE001
                    chunk[i] = (chunk[i][0], chunk[i][1], e)
        share = (time.perf_counter() - start) / len(chunk)
        out = []
        for i, (path, frame, image) in enumerate(chunk):
            row = {"path": path, "frame": frame, "error": "", **rows[i]} if i in rows else error_row(self.task, path, frame, image)
            out.append({**row, "worker": self.worker, "seconds": share})
        return out


class RayBatchPredictor(BatchPredictor):
    """The Ray Data form: yields one pyarrow Table per Predictor call, so a long video streams out
    in pieces and the flat float32 lists keep a plain Parquet type."""

    def __call__(self, batch: dict[str, np.ndarray]):  # type: ignore[override]
        for rows in self.predict_rows(batch):
            yield to_arrow(self.task, rows)
