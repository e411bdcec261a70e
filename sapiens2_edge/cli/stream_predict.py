"""``sapiens2-edge predict`` on a video, URL or camera: an annotated video and one JSON line per frame."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable


def predict_stream(pred, source, output: Path, detect_every: int, smooth: bool, as_json: bool,
                   say: Callable[[str], None], emit_json: Callable[[Any], None]) -> None:
    """Run ``pred`` over ``source`` (a camera index, a video file or a URL) into ``output``;
    ``say`` prints the summary line, ``emit_json`` the summary as JSON (``as_json``)."""
    from ..runtime.tracking import OneEuro
    from ..runtime.video import write_stream

    name = f"camera{source}" if isinstance(source, int) else Path(str(source).rstrip("/")).stem or "stream"
    output.mkdir(parents=True, exist_ok=True)
    video, jsonl = output / f"{name}.annotated.mp4", output / f"{name}.jsonl"
    start = time.perf_counter()
    stream = pred.stream(source, detect_every=detect_every, smooth=OneEuro() if smooth else None)
    counts = write_stream(stream, video, jsonl)
    seconds = time.perf_counter() - start
    if as_json:
        emit_json({"task": pred.task, "backend": pred.backend, "video": str(video), "jsonl": str(jsonl),
                   "seconds": seconds, **counts})
        return
    fps = counts["written"] / seconds if seconds > 0 else 0.0
    say(f"{counts['written']} frame(s) written ({counts['frames']} read, {counts['dropped']} dropped"
        f"{', the source ended early' if counts.get('truncated') else ''}) at {fps:.1f} FPS; "
        f"{video} and {jsonl}")
