"""``sapiens2-edge bench``: artifacts side by side with the torch fp32 eager baseline.

Each row runs in a fresh process so its peak RSS is its own. The baseline is the torch fp32 eager
model of the artifact's architecture and head at the artifact's input size (random weights: speed
does not depend on them). Reported per row: load time, latency count/min/median/p90/max,
throughput, peak RSS, file size, fidelity (the artifact's verification against torch), speed-up.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError

BASELINE = "torch-fp32-eager"


def time_calls(fn, warmup: int, runs: int) -> list[float]:
    """Wall time of ``runs`` calls of ``fn()`` after ``warmup`` untimed ones, sorted."""
    times = []
    for i in range(warmup + runs):
        t = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return sorted(times)


def latency_stats(times: list[float]) -> dict[str, float]:
    """count / min / median / p90 / max of sorted latencies (seconds)."""
    p90 = times[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
    return {"count": len(times), "min_s": times[0], "median_s": statistics.median(times), "p90_s": p90,
            "max_s": times[-1]}


def peak_rss_mb() -> float:
    """This process's peak resident set. Linux: VmHWM, which belongs to the process image since its
    exec; ``ru_maxrss`` would also carry the parent's peak across fork + exec (a bench started from
    a process holding a big model would report that model for every row)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_torch(model):
    """The baseline as a user's own code runs it: the model called under ``inference_mode``, nothing of
    ours around it (the torch backend keeps freed heap pages for reuse, see :mod:`sapiens2_edge.heap`),
    the head's layers one by one as the official model runs them (not :mod:`sapiens2_edge.models.lean_head`)."""
    import torch

    from .models.lean_head import layer_by_layer

    def run(x):
        with torch.inference_mode(), layer_by_layer():
            out = model(torch.from_numpy(x))
        return tuple(o.float().numpy() for o in (out if isinstance(out, tuple) else (out,)))
    return run


def measure_row(target: str, backend: str, warmup: int, runs: int, batch: int, tick=None) -> dict[str, Any]:
    """One row, in this process: ``target`` is an artifact directory or BASELINE:<artifact>.
    ``tick()`` is called after loading and after each call (the parent's progress bar)."""
    from .artifact import read_manifest, verification_inputs
    from .workflows import artifact_label

    tick = tick or (lambda: None)
    t0 = time.perf_counter()
    if target.startswith(BASELINE + ":"):
        root = Path(target.split(":", 1)[1])
        m = read_manifest(root, verify=False)
        from .models.arch import ArchSpec, HeadSpec
        from .models.model import build_model

        model = build_model(ArchSpec.from_dict(m.arch), head=HeadSpec.from_dict(m.head) if m.head else None)
        runner, name, size_mb, fidelity, label = plain_torch(model.eval()), "torch", \
            sum(p.numel() * 4 for p in model.parameters()) / 1e6, None, BASELINE
        reference = None
    else:
        from .runtime.opener import open_artifact

        root = Path(target)
        m, runner, _ = open_artifact(root, backend, "cpu")
        name, label = runner.name, f"{root.name} ({artifact_label(m)})"
        size_mb = sum(f["size"] for f in m.files.values()  # the model's own files (not a bundled detector's)
                      if f["role"] != "reference" and not f["role"].startswith("detector:")) / 1e6
        fidelity, reference = m.fidelity.get("rel_l2"), m.fidelity.get("reference")
    load_s = time.perf_counter() - t0
    tick()
    x = verification_inputs(m.input_size, batch=min(batch, m.max_batch))

    def call():
        runner(x)
        tick()
    stats = latency_stats(time_calls(call, warmup, runs))
    return {"artifact": label, "backend": name, "input": f"{m.input_size[0]}x{m.input_size[1]}", "batch": len(x),
            "load_s": load_s, **stats, "throughput_img_s": len(x) / stats["median_s"],
            "peak_rss_mb": peak_rss_mb(), "size_mb": size_mb,
            "fidelity_rel_l2": fidelity, "fidelity_reference": reference}


TICK = "sapiens2-edge-bench-tick"


def check_counts(warmup: int, runs: int, batch: int) -> None:
    if runs < 1:
        raise ConfigError(f"--runs must be at least 1 (the timed runs per row), got {runs}")
    if warmup < 0:
        raise ConfigError(f"--warmup must be 0 or more, got {warmup}")
    if batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {batch}")


def run(artifacts: list[Path], backends: list[str], warmup: int = 1, runs: int = 5, batch: int = 1,
        baseline: bool = True, talk: Any = None) -> list[dict[str, Any]]:
    """All rows, each in a child process; the baseline first, speed-ups relative to it.
    ``talk`` (a :class:`~sapiens2_edge.workflows.Talk`) shows a bar over every load and timed call."""
    check_counts(warmup, runs, batch)
    if not artifacts:
        raise ConfigError("bench needs at least one artifact directory")
    from .artifact import read_manifest

    sizes = {tuple(read_manifest(a, verify=False).input_size) for a in artifacts}
    if len(sizes) > 1:
        raise ConfigError(f"the artifacts were exported for different input sizes {sorted(sizes)}; bench compares "
                          "one size at a time")
    jobs = ([(f"{BASELINE}:{artifacts[0]}", "torch")] if baseline else [])
    jobs += [(str(a), b) for a in artifacts for b in backends]
    rows = []
    import contextlib

    bar = talk.bar(f"bench: {len(jobs)} rows x (load + {warmup} warm-up + {runs} timed)", len(jobs) * (1 + warmup + runs),
                   "step") if talk else contextlib.nullcontext(lambda n=1: None)
    with bar as advance:
        for target, backend in jobs:
            rows.append(_child_row(target, backend, warmup, runs, batch, advance))
    base = rows[0]["median_s"] if baseline else None
    for r in rows:
        r["speedup"] = base / r["median_s"] if base else None
    return rows


def _child_row(target: str, backend: str, warmup: int, runs: int, batch: int, advance) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "sapiens2_edge.bench", target, backend, str(warmup), str(runs), str(batch)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errors = []
    for line in proc.stderr:
        if line.strip() == TICK:
            advance()
        elif line.strip():
            errors.append(line.strip())
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise ConfigError(f"bench of {target} on {backend} failed: {errors[-1] if errors else 'no message'}")
    return json.loads(out.strip().splitlines()[-1])


COLUMNS = (("#", "row (see the legend below)"), ("backend", "the runtime that ran the row"),
           ("load s", "seconds to open the artifact / build the model"), ("median s", "median latency of one call (min, p90 "
                                                                             "and max are in bench.md)"),
           ("img/s", "images per second at the median"),
           ("RSS MB", "peak resident memory of the row's own process"),
           ("MB", "size of the model files"), ("rel L2", "relative L2 error of the artifact's outputs vs the "
                                                 "torch model it was exported from, on the same input"),
           ("speed-up", "median latency of row 1 / this row"))


def bench_table(rows: list[dict[str, Any]]):
    """The rows as a rich Table that fits 80 columns (what ``sapiens2-edge bench`` and the demo
    print), rows numbered; :func:`bench_legend` names them and says what each column measures."""
    from rich import box
    from rich.table import Table

    table = Table(title="sapiens2-edge bench", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  padding=(0, 1), collapse_padding=True)
    for col, _ in COLUMNS:
        table.add_column(col, justify="left" if col in ("#", "backend") else "right", no_wrap=True,
                         min_width=len(col))
    for i, r in enumerate(rows, 1):
        table.add_row(str(i), r["backend"], f"{r['load_s']:.2f}", f"{r['median_s']:.3f}",
                      f"{r['throughput_img_s']:.2f}", f"{r['peak_rss_mb']:.0f}", f"{r['size_mb']:.1f}",
                      "-" if r["fidelity_rel_l2"] is None else f"{r['fidelity_rel_l2']:.1e}",
                      "-" if r["speedup"] is None else f"{r['speedup']:.2f}x")
    return table


def bench_legend(rows: list[dict[str, Any]], width: int = 80) -> list[str]:
    """Lines of at most ``width`` characters: what each row is and what each column measures."""
    import textwrap

    lines = []
    for i, r in enumerate(rows, 1):
        what = "torch fp32 eager, same architecture and input (the baseline)" if r["artifact"] == BASELINE \
            else r["artifact"]
        lines += textwrap.wrap(f"{i}: {what}, input {r['input']}, batch {r['batch']}, {r['count']} timed runs",
                               width, subsequent_indent="   ")
    refs = {r.get("fidelity_reference") for r in rows} - {None}
    for col, meaning in COLUMNS[2:]:
        if col == "rel L2" and len(refs) == 1:
            meaning = f"relative L2 error of the artifact's outputs vs {refs.pop()}, on the same input"
        lines += textwrap.wrap(f"{col}: {meaning}", width, subsequent_indent="   ")
    return lines


def write_reports(rows: list[dict[str, Any]], out_dir: Path, command: str) -> list[Path]:
    """bench.md (a Markdown table headed by ``command``), bench.csv and bench.json in ``out_dir``."""
    import csv

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    with open(out_dir / "bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    head = ("| artifact | backend | input | load (s) | count | min | median | p90 | max (s) | img/s | peak RSS (MB) | "
            "size (MB) | rel L2 vs the exported torch model | speed-up |")
    lines = [f"`{command}`", "", head, "|" + "---|" * 14]
    for r in rows:
        fid = "-" if r["fidelity_rel_l2"] is None else f"{r['fidelity_rel_l2']:.2e}"
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        lines.append(f"| {r['artifact']} | {r['backend']} | {r['input']} | {r['load_s']:.2f} | {r['count']} | "
                     f"{r['min_s']:.3f} | {r['median_s']:.3f} | {r['p90_s']:.3f} | {r['max_s']:.3f} | "
                     f"{r['throughput_img_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['size_mb']:.1f} | {fid} | {sp} |")
    (out_dir / "bench.md").write_text("\n".join(lines) + "\n")
    return [out_dir / n for n in ("bench.md", "bench.csv", "bench.json")]


# --- speed per person count ----------------------------------------------------------------------------
PEOPLE_COUNTS = (1, 2, 4, 8)
FRAME_SIZE = (720, 1280)  # (H, W) of the synthetic frame: a 720p camera


def people_boxes(n: int, image_size: tuple[int, int]) -> "Any":
    """``n`` person boxes side by side (rows of at most 4) covering an image of ``image_size``."""
    import numpy as np

    h, w = image_size
    cols, rows = min(n, 4), -(-n // 4)
    bw, bh = w / cols, h / rows
    return np.array([[c * bw, r * bh, (c + 1) * bw - 1, (r + 1) * bh - 1] for r in range(rows) for c in range(cols)
                     ][:n], dtype=np.float32)


class _Timed:
    """Wraps a callable and records the wall time of each call."""

    def __init__(self, fn) -> None:
        self.fn, self.times = fn, []

    def __call__(self, *args):
        t = time.perf_counter()
        try:
            return self.fn(*args)
        finally:
            self.times.append(time.perf_counter() - t)


def people_rows(pred, counts=PEOPLE_COUNTS, warmup: int = 1, runs: int = 5) -> list[dict[str, Any]]:
    """End-to-end pose latency of ``pred`` (a pose Predictor) per person count on a synthetic 720p
    frame: its detector (when it has one) runs on the frame as usual, then the frame has exactly
    ``n`` people (boxes side by side), whose crops run as one batch (chunks of the artifact's
    ``max_batch``) and are decoded. Per row: median / min total, and the mean detector, network and
    rest (crops, decoding, mapping back) time of a call."""
    import numpy as np

    from .artifact import verification_inputs
    from .tasks.detection_processing import Detections

    check_counts(warmup, runs, 1)
    if pred.task != "pose":
        raise ConfigError(f"the people table times pose; this is a {pred.task} model")
    frame = np.clip(verification_inputs(FRAME_SIZE, batch=1)[0].transpose(1, 2, 0) * 50 + 128, 0, 255).astype(np.uint8)
    detector, runner = pred.detector, pred.runner
    rows = []
    try:
        for n in counts:
            boxes = people_boxes(n, FRAME_SIZE)
            det = _Timed(detector) if detector is not None else None

            def people(image, det=det, boxes=boxes):
                if det is not None:
                    det(image)
                return Detections(boxes, np.ones(len(boxes), np.float32))
            net = _Timed(runner)
            pred.detector, pred.runner = people, net
            totals, split = [], []
            for i in range(warmup + runs):
                net.times.clear()
                if det is not None:
                    det.times.clear()
                t = time.perf_counter()
                res = pred(frame)
                total = time.perf_counter() - t
                if i >= warmup:
                    totals.append(total)
                    split.append((sum(det.times) if det else 0.0, sum(net.times), len(net.times)))
            assert len(res) == n
            d, m = float(np.mean([s[0] for s in split])), float(np.mean([s[1] for s in split]))
            rows.append({"people": n, "crops": n * (2 if pred.pipeline.flip_test else 1), "network_calls": split[0][2],
                         "keypoints": res.keypoints.shape[1], **latency_stats(sorted(totals)), "detector_s": d,
                         "network_s": m, "rest_s": float(np.mean(totals)) - d - m,
                         "detector": "none" if detector is None else type(detector).__name__})
    finally:
        pred.detector, pred.runner = detector, runner
    return rows


def decode_rows(pred, keypoints: Any = "coco17", warmup: int = 1, runs: int = 20) -> list[dict[str, Any]]:
    """Decoding time of one person's heatmaps (flip-averaged, as the Predictor does) for all 308
    keypoints and for the ``keypoints`` subset, on the network's own output for one crop pair."""
    import numpy as np

    from .tasks import get_pipeline

    check_counts(warmup, runs, 1)
    full = get_pipeline("pose", input_size=pred.input_size)
    sub = get_pipeline("pose", input_size=pred.input_size, keypoints=keypoints)
    h, w = pred.input_size
    batch, meta = full.preprocess(np.full((h, w, 3), 128, np.uint8), boxes=[[0, 0, w - 1, h - 1]])
    raw = pred.runner(batch)
    out = []
    for name, pipe in (("all 308", full), (f"subset {keypoints if isinstance(keypoints, str) else len(sub.keypoints)}", sub)):
        stats = latency_stats(time_calls(lambda pipe=pipe: pipe.postprocess(raw, meta), warmup, runs))
        out.append({"decode": name, "keypoints": len(pipe.keypoints) if pipe.keypoints else raw[0].shape[1],
                    "heatmaps": f"{raw[0].shape[2]}x{raw[0].shape[3]}", **stats})
    for r in out:
        r["vs_all"] = r["median_s"] / out[0]["median_s"]
    return out


def people_report(people: list[dict[str, Any]], decode: list[dict[str, Any]], command: str, note: str = "") -> str:
    """The two tables as Markdown (what ``bench --people`` writes to people.md)."""
    lines = [f"`{command}`", ""] + ([note, ""] if note else [])
    lines += ["| people | crops | network calls | median (s) | min (s) | detector (s) | network (s) | crops + decoding "
              "(s) | keypoints |", "|" + "---|" * 9]
    for r in people:
        lines.append(f"| {r['people']} | {r['crops']} | {r['network_calls']} | {r['median_s']:.3f} | {r['min_s']:.3f} | "
                     f"{r['detector_s']:.3f} | {r['network_s']:.3f} | {r['rest_s']:.3f} | {r['keypoints']} |")
    lines += ["", "| decoding (one person, flip-averaged) | keypoints | heatmaps | median (ms) | min (ms) | vs all 308 |",
              "|" + "---|" * 6]
    for r in decode:
        lines.append(f"| {r['decode']} | {r['keypoints']} | {r['heatmaps']} | {1e3 * r['median_s']:.2f} | "
                     f"{1e3 * r['min_s']:.2f} | {r['vs_all']:.3f}x |")
    return "\n".join(lines) + "\n"


def run_people(artifacts: list[Path], backend: str, detector: Any, keypoints: str, warmup: int, runs: int,
               out_dir: Path, as_json: bool = False) -> Any:
    """``sapiens2-edge bench POSE --people``: both tables, written to people.md / people.json in
    ``out_dir``; returns the Markdown (or, ``as_json``, the data)."""
    import os

    from .runtime.predictor import Predictor

    if len(artifacts) != 1:
        raise ConfigError(f"bench --people times one pose model, got {len(artifacts)}")
    subset = keypoints if keypoints.lower() == "coco17" else [k.strip() for k in keypoints.split(",") if k.strip()]
    pred = Predictor(str(artifacts[0]), backend=backend, device="cpu", detector=detector)
    command = (f"sapiens2-edge bench {artifacts[0]} --people --backend {backend} --runs {runs} --warmup {warmup} "
               f"--keypoints {keypoints}" + (f" --detector {detector}" if isinstance(detector, str) else ""))
    note = (f"pose on {pred.backend} ({pred.runner.describe()}), input {pred.input_size[0]}x{pred.input_size[1]}, "
            f"detector: {pred.detector!r}; load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}, "
            f"{os.cpu_count()} CPUs")
    people, decode = people_rows(pred, PEOPLE_COUNTS, warmup, runs), decode_rows(pred, subset, warmup, max(runs, 10))
    text = people_report(people, decode, command, note)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"command": command, "note": note, "people": people, "decode": decode}
    (out_dir / "people.md").write_text(text)
    (out_dir / "people.json").write_text(json.dumps(data, indent=2))
    return data if as_json else text


if __name__ == "__main__":  # child process: one row as JSON on stdout
    target, backend, warmup, runs, batch = sys.argv[1:6]
    row = measure_row(target, backend, int(warmup), int(runs), int(batch),
                      tick=lambda: print(TICK, file=sys.stderr, flush=True))
    print(json.dumps(row))
