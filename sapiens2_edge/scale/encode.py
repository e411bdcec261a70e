"""One output row per image or video frame: a task result as flat columns any Parquet reader takes
(numbers as plain lists, seg labels as a PNG, other dense maps as a compressed ``.npz``), and back.

Columns of every row: ``path``, ``frame`` (0 for an image), ``error`` ("" when it worked),
``height``, ``width``, ``worker`` (who ran it) and ``seconds`` (its share of the batch's time).
Pose adds ``num_people`` and flat float32 ``boxes`` (N*4), ``keypoints`` (N*K*2), ``scores`` (N*K),
``detection_scores`` (N, empty without a detector); seg adds ``labels_png`` (lossless uint8 PNG);
normal, pointmap and albedo add ``arrays_npz`` (``np.savez_compressed`` of ``result.arrays()``),
pointmap also ``pointmap_scale`` and ``focal_length``. :func:`decode_row` turns a row back into arrays.
"""

from __future__ import annotations

import io
from typing import Any

import cv2
import numpy as np

from ..errors import InvalidImageError

COMMON = ("path", "frame", "error", "height", "width", "worker", "seconds")
POSE_LISTS = ("boxes", "keypoints", "scores", "detection_scores")
TASK_COLUMNS = {
    "pose": ("num_people", *POSE_LISTS),
    "seg": ("labels_png",),
    "normal": ("arrays_npz",),
    "albedo": ("arrays_npz",),
    "pointmap": ("arrays_npz", "pointmap_scale", "focal_length"),
}


def columns(task: str) -> tuple[str, ...]:
    return COMMON + TASK_COLUMNS[task]


def _empty(task: str) -> dict[str, Any]:
    out: dict[str, Any] = {"height": 0, "width": 0}
    for name in TASK_COLUMNS[task]:
        out[name] = (np.zeros(0, np.float32) if name in POSE_LISTS else b"" if name.endswith(("_png", "_npz"))
                     else 0 if name == "num_people" else float("nan"))
    return out


def encode_result(task: str, result: Any) -> dict[str, Any]:
    """The task columns of one result (see the module docstring)."""
    if task == "pose":
        det = getattr(result, "detection_scores", None)
        h, w = result.image_size
        return {"height": int(h), "width": int(w), "num_people": int(len(result.keypoints)),
                "boxes": np.asarray(result.boxes, np.float32).ravel(),
                "keypoints": np.asarray(result.keypoints, np.float32).ravel(),
                "scores": np.asarray(result.scores, np.float32).ravel(),
                "detection_scores": np.zeros(0, np.float32) if det is None else np.asarray(det, np.float32).ravel()}
    arrays = result.arrays()
    first = next(iter(arrays.values()))
    out: dict[str, Any] = {"height": int(first.shape[0]), "width": int(first.shape[1])}
    if task == "seg":
        ok, png = cv2.imencode(".png", np.ascontiguousarray(arrays["labels"]))
        if not ok:
            raise InvalidImageError("OpenCV could not encode the seg labels as PNG")
        out["labels_png"] = png.tobytes()
        return out
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    out["arrays_npz"] = buf.getvalue()
    if task == "pointmap":
        out["pointmap_scale"], out["focal_length"] = float(result.scale), float(result.focal_length)
    return out


def error_row(task: str, path: str, frame: int, error: BaseException) -> dict[str, Any]:
    """The row of an input that failed: its columns empty, ``error`` = ``Type: message``."""
    return {"path": path, "frame": int(frame), "error": f"{type(error).__name__}: {' '.join(str(error).split())}",
            **_empty(task)}


def decode_row(task: str, row: dict[str, Any]) -> dict[str, np.ndarray]:
    """A written row's result arrays, shaped as the task's ``result.arrays()`` (pose also
    ``detection_scores`` when a detector ran; pointmap also ``scale``). Never unpickles."""
    if row.get("error"):
        return {}
    if task == "pose":
        n = int(row["num_people"])
        kp = np.asarray(row["keypoints"], np.float32)
        k = kp.size // max(2 * n, 1)
        out = {"boxes": np.asarray(row["boxes"], np.float32).reshape(n, 4),
               "keypoints": kp.reshape(n, k, 2), "scores": np.asarray(row["scores"], np.float32).reshape(n, k)}
        det = np.asarray(row["detection_scores"], np.float32)
        return {**out, "detection_scores": det} if det.size else out
    if task == "seg":
        png = np.frombuffer(row["labels_png"], np.uint8)
        return {"labels": cv2.imdecode(png, cv2.IMREAD_UNCHANGED)}
    with np.load(io.BytesIO(row["arrays_npz"]), allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    if task == "pointmap":
        out["scale"] = np.float64(row["pointmap_scale"])
    return out


def arrow_schema(task: str):
    """The pyarrow schema of a task's rows (every Parquet file of a run has it)."""
    import pyarrow as pa

    types = {"path": pa.string(), "frame": pa.int64(), "error": pa.string(), "height": pa.int32(),
             "width": pa.int32(), "worker": pa.string(), "seconds": pa.float64(), "num_people": pa.int32(),
             "labels_png": pa.binary(), "arrays_npz": pa.binary(), "pointmap_scale": pa.float64(), "focal_length": pa.float64()}
    return pa.schema([(c, pa.list_(pa.float32()) if c in POSE_LISTS else types[c]) for c in columns(task)])


def to_arrow(task: str, rows: list[dict[str, Any]]):
    """Rows as a pyarrow Table with :func:`arrow_schema` (flat float32 lists stay float32)."""
    import pyarrow as pa

    schema = arrow_schema(task)
    arrays = []
    for field in schema:
        values = [r[field.name] for r in rows]
        if field.name in POSE_LISTS:
            offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int32)
            flat = np.concatenate(values).astype(np.float32) if values else np.zeros(0, np.float32)
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float32())))
        else:
            arrays.append(pa.array(values, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def to_numpy(task: str, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows as a dict of numpy arrays, one entry per row (variable-length lists and bytes as
    object arrays): the batch shape Spark's ``predict_batch_udf`` and Beam's ``RunInference`` use."""
    out = {}
    for name in columns(task):
        values = [r[name] for r in rows]
        if name in POSE_LISTS or name.endswith(("_png", "_npz")):
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            out[name] = arr
        else:
            out[name] = np.asarray(values)
    return out
