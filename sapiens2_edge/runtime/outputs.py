"""Predicting over image files and writing what a prediction produced (torch-free).

Per image ``<stem>``: ``<stem>.png`` (the result drawn over the image), ``<stem>_<array>.npy``
(each of ``result.arrays()``) and ``<stem>.json`` (``result.to_json()``); a pose run also writes
``keypoints.json`` in the reference demo's layout for all images and ``coco_keypoints.json``, the
COCO-17 keypoint results (image_id: the file name's number for COCO-style names such as
``000000000139.jpg``, else the image's position in the list).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np

from ..errors import InvalidBoxError, Sapiens2EdgeError
from ..tasks import Result, load_image, pose_demo_json

Progress = Callable[[Sequence[Path]], Iterable[Path]]


def write_outputs(result: Result, image: np.ndarray, out_dir: str | Path, stem: str) -> list[Path]:
    """Overlay PNG, raw arrays (.npy) and the JSON summary of one result; returns the files written."""
    out_dir = Path(out_dir)
    overlay = out_dir / f"{stem}.png"
    # imencode + write_bytes, not imwrite: a failed write raises instead of returning False, and
    # non-ASCII paths work everywhere (as in load_image).
    overlay.write_bytes(cv2.imencode(".png", cv2.cvtColor(result.draw(image), cv2.COLOR_RGB2BGR))[1].tobytes())
    written = [overlay]
    for key, arr in result.arrays().items():
        path = out_dir / f"{stem}_{key}.npy"
        np.save(path, arr)
        written.append(path)
    summary = out_dir / f"{stem}.json"
    summary.write_text(result.to_json())
    return [*written, summary]


def run_predictions(predictor: Any, inputs: Sequence[str | Path], out_dir: str | Path,
                    boxes: dict[str, Any] | None = None, progress: Progress | None = None,
                    on_error: Callable[[Path, Exception], None] | None = None) -> list[Result]:
    """Predict each image file with ``predictor`` and write its outputs to ``out_dir``.

    ``boxes``: pose person boxes per image file name (images without an entry use the whole
    image). ``progress`` wraps the list of inputs (e.g. a tqdm bar). ``on_error``: when given, an
    image that cannot be read or predicted (a typed error or an OS error) is passed to it with the
    error and the run goes on with the next image; without it the error is raised. Returns the
    results of the images that succeeded, in order.
    """
    boxes = boxes or {}
    if boxes and predictor.task != "pose":
        raise InvalidBoxError(f"boxes are only used by pose models; this is a {predictor.task} model")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in inputs]
    results, done = [], []
    for path in progress(paths) if progress else paths:
        try:
            image = load_image(path)
            result = predictor(image, boxes=boxes.get(path.name))
            write_outputs(result, image, out_dir, path.stem)
        except (Sapiens2EdgeError, OSError) as e:
            if on_error is None:
                raise
            on_error(path, e)
            continue
        results.append(result)
        done.append(path)
    if predictor.task == "pose":
        frames = pose_demo_json(results, [p.name for p in done])
        (out_dir / "keypoints.json").write_text(json.dumps(frames, indent=1))
        coco = [e for i, (r, p) in enumerate(zip(results, done, strict=True))
                for e in r.to_coco(int(p.stem) if p.stem.isdigit() else i)]
        (out_dir / "coco_keypoints.json").write_text(json.dumps(coco))
    return results


def describe_result(result: Result, top: int = 3) -> str:
    """One line for people about a result (its JSON summary, in words)."""
    d = result.to_dict()
    if d["task"] == "seg":
        counts = d["class_pixel_counts"]
        total = max(sum(counts.values()), 1)
        largest = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return (f"seg, {d['num_classes']} classes: foreground {100 * d['foreground_fraction']:.0f} % of the pixels; "
                "largest " + ", ".join(f"{name} {100 * n / total:.0f} %" for name, n in largest))
    if d["task"] == "pose":
        people = d["instances"]
        scores = [s for p in people for s in p["keypoint_scores"]]
        confident = sum(s >= 0.3 for s in scores)
        mean = sum(scores) / len(scores) if scores else 0.0
        return (f"pose, {len(people)} person box(es) x {d['num_keypoints']} keypoints: {confident} with score >= 0.3 "
                f"(mean score {mean:.2f})")
    stats = d.get("stats", {})
    mean = stats.get("mean")
    text = f"{d['task']} map {'x'.join(str(v) for v in d['shape'])}"
    if mean is not None:
        text += ", channel means " + ", ".join(f"{v:.3g}" for v in np.ravel(mean))
    if "scale" in d:
        text += f", scale {d['scale']:.3g}, focal length {d['focal_length_px']:.0f} px"
    return text
