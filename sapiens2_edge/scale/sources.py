"""What a scale-out run reads and what it already wrote: inputs from a folder, a glob, files or a
list; the keys (path, frame) found in an output folder's Parquet files, for resuming."""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError
from ..runtime.inputs import IMAGE_SUFFIXES, VIDEO_SUFFIXES

log = logging.getLogger("sapiens2_edge")
MEDIA_SUFFIXES = IMAGE_SUFFIXES + VIDEO_SUFFIXES


def list_inputs(source: Any) -> list[str]:
    """Image and video files of ``source``: a folder (recursively, by suffix), a glob pattern, a
    file, or a list of any of those; absolute paths, sorted, each once."""
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    found: set[str] = set()
    for item in items:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES]
            if not files:
                raise ConfigError(f"no images or videos ({', '.join(MEDIA_SUFFIXES)}) under folder {path}")
        elif path.is_file():
            files = [path]
        elif glob.has_magic(text):
            files = [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
            if not files:
                raise ConfigError(f"the pattern {text!r} matches no files")
        else:
            raise ConfigError(f"input {text} does not exist; expected a folder, a glob pattern or image/video files")
        found.update(str(p.resolve()) for p in files)
    return sorted(found)


def written_keys(output: str | os.PathLike) -> dict[str, set[int]]:
    """(path -> frames) of the rows in ``output``'s Parquet files, failed rows included. A file that
    does not read (a job killed while writing it) is renamed ``*.partial`` and its rows count as
    missing."""
    import pyarrow.parquet as pq

    done: dict[str, set[int]] = {}
    root = Path(output)
    if not root.exists():
        return done
    for file in sorted(root.rglob("*.parquet")):
        try:
            table = pq.read_table(file, columns=["path", "frame"])
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a truncated file
            log.warning("sapiens2_edge: %s does not read (%s); its rows will be predicted again", file, e)
            file.rename(file.with_name(file.name + ".partial"))
            continue
        for path, frame in zip(table.column("path").to_pylist(), table.column("frame").to_pylist(), strict=True):
            done.setdefault(path, set()).add(int(frame))
    return done


def plan(inputs: Iterable[str], done: dict[str, set[int]]) -> tuple[list[dict[str, Any]], int]:
    """The work rows (``path``, ``frame``, ``skip_frames``) still to do and how many inputs were
    skipped: an image is done once written; a video is read again, its written frames skipped."""
    from ..runtime.inputs import is_video

    rows, skipped = [], 0
    for path in inputs:
        frames = done.get(path, set())
        if is_video(path):
            if frames and len(frames) >= _header_frames(path):  # all there (or the file never opened)
                skipped += 1
            else:
                rows.append({"path": path, "frame": 0, "skip_frames": sorted(frames)})
        elif frames:
            skipped += 1
        else:
            rows.append({"path": path, "frame": 0, "skip_frames": []})
    return rows, skipped


def _header_frames(path: str) -> int:
    """The frame count a video's header gives (0 when it does not open); no frame is decoded."""
    import cv2

    capture = cv2.VideoCapture(path)
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if capture.isOpened() else 0
    finally:
        capture.release()
