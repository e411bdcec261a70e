"""The library side of the ``sapiens2-edge`` commands that chain several steps: describe a
checkpoint, quantize and save one with its fidelity report, export with a quantization scheme.

The CLI parses arguments, calls these and prints what they return; the demo chain uses them too.
"""

from __future__ import annotations

import os
from contextlib import contextmanager as _contextmanager
from pathlib import Path
from typing import Any, Sequence

QUANT_SCHEMES = ("int8-weight", "int4-weight", "int8", "fp8")
"""The schemes ``export(scheme=...)`` quantizes with before exporting."""
ACTIVATION_SCHEMES = ("int8", "fp8")
"""The schemes that quantize activations (calibrated static ranges or per token at run time)."""
FLOAT_SCHEMES = ("fp32", "bf16", "fp16")
"""Float precisions ``export(precision=...)`` writes (bf16: OpenVINO, native and torch, computed in bf16 where the CPU has it)."""


def checkpoint_info(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """What a checkpoint holds, from its safetensors header alone (no weights are read)."""
    from .models.arch import backbone_shapes, count_params, head_shapes
    from .models.checkpoint import header_summary, resolve_checkpoint
    from .models.layout import describe_checkpoint, is_random_checkpoint

    path = resolve_checkpoint(checkpoint)
    header, layout, arch, head, _, _ = describe_checkpoint(path)
    summary = header_summary(header)
    gqa = [i for i, kv in enumerate(arch.kv_heads) if kv < arch.num_heads]
    return {
        "path": str(path), "layout": layout, "task": head.task if head else None, "arch": arch.name,
        "embed_dim": arch.embed_dim, "depth": arch.depth, "heads": arch.num_heads, "head_dim": arch.head_dim,
        "gqa_blocks": f"{gqa[0]}..{gqa[-1]} ({arch.kv_heads[gqa[0]]} kv heads)" if gqa else "none",
        "tokenizer_4k": arch.tokenizer_depth, "ffn_hidden": arch.ffn_hidden,
        "input_size": list(head.input_size) if head and head.input_size else None,
        "parameters": summary["num_parameters"], "backbone_parameters": count_params(backbone_shapes(arch)),
        "head_parameters": count_params(head_shapes(head, arch.input_multiple)) if head else 0,
        "tensors": summary["num_tensors"], "dtypes": summary["dtypes"], "file_size": summary["file_size"],
        "random_weights": is_random_checkpoint(header.metadata),
    }


def quantize_and_save(model: Any, scheme: str, calibration: Any, path: str | os.PathLike, *, held_out: Any,
                      held_out_source: str, input_size: Sequence[int] | None = None, calibration_size: int = 32,
                      eval_samples: int = 16, eval_min_samples: int | None = 4,
                      report_path: str | os.PathLike | None = None, progress: Any = None,
                      **options: Any) -> tuple[Any, Any]:
    """Quantize ``model`` (loaded, or anything ``load_model`` accepts) on ``calibration``, measure its
    task fidelity against the float model on ``held_out`` (with calibration data, the report's output
    SQNR is measured on the same forwards), and save it
    to ``path`` (and the report's JSON to ``report_path``). Up to ``eval_samples`` held-out images are
    read; after ``eval_min_samples`` of them (None: all), only until the task's headline metric is known
    to its 95 % interval (:mod:`.quantization.enough`). ``options`` go to ``quantize`` (e.g.
    ``activation_mode``, ``budget``). ``progress``: None (bars on a terminal), a bool, or a
    ``(iterable, total, desc) -> iterable`` hook such as :meth:`Talk.iterate`. Returns (QuantizedModel, QuantReport)."""
    from . import load_model
    from .quantization import quantize, save_quantized
    from .quantization.evaluate import evaluate

    model = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    size = tuple(input_size or model.input_size)
    if progress is not None:
        options["progress"] = progress
    qmodel, report = quantize(model, scheme, calibration=calibration, input_size=size,
                              calibration_size=calibration_size, held_out=held_out, held_out_samples=eval_samples,
                              held_out_min_samples=eval_min_samples, **options)
    if not report.fidelity:  # nothing measured on the held-out data yet (no calibration data, e.g. weight-only)
        report.fidelity = evaluate(model, qmodel, held_out, input_size=size, samples=eval_samples, show=progress,
                                   min_samples=eval_min_samples)
    report.fidelity["evaluated_on"] = held_out_source
    save_quantized(qmodel, Path(path), report=report)
    if report_path is not None:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(report.to_json())
    return qmodel, report


# --- checks made before any work ----------------------------------------------------------------
#: The extra that installs each optional package (what a missing-package message tells to install).
EXTRA_OF = {"torch": "torch", "huggingface_hub": "torch", "onnx": "export", "onnxscript": "export",
            "onnxruntime": "onnx", "openvino": "openvino", "coremltools": "coreml", "triton": "triton",
            "ai_edge_litert": "litert", "litert_torch": "litert-export", "ai_edge_quantizer": "litert-export",
            "executorch": "executorch"}


def missing_package_error(package: str, what: str, extra: str | None = None):
    """The typed error for ``what`` needing ``package``, which is not installed: names the extra
    (``extra``, default: the one that installs ``package``)."""
    from .errors import BackendUnavailableError

    extra = extra or EXTRA_OF.get(package.split(".")[0], "all")
    return BackendUnavailableError(f"{what} needs {package.split('.')[0]}, which is not installed: "
                                   f'pip install "sapiens2-edge[{extra}]"')


def require(package: str, what: str, extra: str | None = None) -> None:
    """Raise :func:`missing_package_error` unless ``package`` can be imported."""
    import importlib.util

    try:
        found = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise missing_package_error(package, what, extra)


def check_scheme_format(scheme: str, fmt: str, static: bool = False) -> None:
    """Refuse, before any quantizing, a scheme an artifact format cannot carry (``static``: with
    calibrated static activation ranges); the message names the schemes that format takes and the
    formats that take the scheme."""
    from .artifact.formats import FORMATS, get_format
    from .errors import ConfigError

    f = get_format(fmt)
    takes = f.precisions if scheme in FLOAT_SCHEMES else f.schemes
    static = static and scheme in ACTIVATION_SCHEMES
    if scheme in takes and (f.static_ranges or not static):
        return
    others = [n for n, g in FORMATS.items() if scheme in (g.precisions if scheme in FLOAT_SCHEMES else g.schemes)
              and (g.static_ranges or not static)]
    if scheme in takes:
        raise ConfigError(f"a {fmt} artifact quantizes activations at run time (per token) and cannot carry the "
                          f"calibrated static ranges of --activations static: use --activations dynamic with "
                          f"--format {fmt}, or --format {' / '.join(others)} for static {scheme}")
    alternative = next((s for s in ("int8-weight", "fp16", "fp32") if s in (*f.schemes, *f.precisions)), takes[0])
    raise ConfigError(f"a {fmt} artifact cannot carry scheme {scheme} ({fmt} takes {', '.join(takes)}): use "
                      f"--scheme {alternative} with --format {fmt}"
                      + (f", or --format {' / '.join(others)} for {scheme}" if others else ""))


def cuda_devices() -> tuple[int, str]:
    """(number of CUDA devices, which runtime says so) as far as the installed runtimes can tell."""
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        import torch

        return torch.cuda.device_count(), "torch"
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        return int("CUDAExecutionProvider" in onnxruntime.get_available_providers()), "onnxruntime"
    return 0, "no CUDA-capable runtime installed"


def check_device(device: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, refused up front when there is no such CUDA device."""
    import re

    from .errors import BackendUnavailableError, ConfigError

    match = re.fullmatch(r"auto|cpu|cuda(?::(\d+))?", device)
    if match is None:
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        count, source = cuda_devices()
        index = int(match.group(1) or 0)
        if count == 0:
            raise BackendUnavailableError(f"--device {device}: no CUDA device is available on this machine "
                                          f"({source}); use --device cpu or --device auto")
        if index >= count:
            raise ConfigError(f"--device {device}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return device


def artifact_label(manifest: Any) -> str:
    """``"<format> <scheme>"`` of an artifact: its quantization scheme, else its precision."""
    scheme = (manifest.quantization or {}).get("scheme") or manifest.precision
    return f"{manifest.format} {scheme}"


# --- how long jobs talk ---------------------------------------------------------------------------
class Talk:
    """What a long job says: lines, and progress with an ETA.

    This plain form writes lines through ``write`` (the CLI's console off a terminal, tests): a bar
    writes a line when it opens (before its work starts), then at most every ``every`` seconds, and
    when it closes. The CLI draws live bars instead on a terminal (same methods).
    """

    def __init__(self, write: Any = print, every: float = 5.0):
        self.write, self.every = write, every

    def say(self, text: str) -> None:
        self.write(text)

    @_contextmanager
    def bar(self, desc: str, total: int | None, unit: str = "step"):
        """A context manager yielding ``advance(n=1)``; a ``desc`` with :data:`UP_TO` says its time left
        as an upper bound."""
        import time

        start = last = time.monotonic()
        done = 0
        self.write(f"      {desc}: 0/{total if total is not None else '?'} {plural(unit, total)}")

        def advance(n: int = 1) -> None:
            nonlocal last, done
            done += n
            now = time.monotonic()
            if now - last >= self.every and done != total:
                last = now
                self.write(f"      {desc}: {_counted(done, total, unit, now - start, UP_TO in desc)}")
        yield advance
        self.write(f"      {desc}: {done} {plural(unit, done)} in {time.monotonic() - start:.1f} s")

    @_contextmanager
    def timer(self, desc: str, estimate_s: float):
        """A context manager around one step that reports nothing itself: elapsed time against an estimate."""
        import time

        start = time.monotonic()
        self.write(f"      {desc}: started, about {duration_text(estimate_s)} (estimate)")
        with ticking(self.every, lambda: self.write(f"      {desc}: {time.monotonic() - start:.0f} s elapsed of about "
                                                    f"{duration_text(estimate_s)} (estimate)")):
            yield
        self.write(f"      {desc}: done in {time.monotonic() - start:.1f} s")

    def iterate(self, iterable: Any, total: int | None, desc: str, unit: str = "batch"):
        """``iterable`` with a bar (the ``progress=`` hook of ``quantize`` and ``evaluate``); a caller that
        stops early (an evaluation with enough images) ends the bar at the items it took."""
        with self.bar(desc, total, unit) as advance:
            for item in iterable:
                try:
                    yield item
                except GeneratorExit:  # the caller's loop ended after using this item
                    advance()
                    return
                advance()


@_contextmanager
def ticking(every: float, fn: Any):
    """Call ``fn()`` every ``every`` seconds from a thread while the block runs."""
    import threading

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            fn()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def plural(unit: str, count: int | None = None) -> str:
    """``unit`` for ``count`` of it: batch, batches."""
    return unit if count == 1 else unit + ("es" if unit.endswith(("s", "ch")) else "s")


def duration_text(seconds: float) -> str:
    """``"42 s"`` or ``"3.5 min"``."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


#: in a stage's description, marks a total the stage may stop short of (an evaluation that reads
#: held-out images until its metric is known): its time left is then an upper bound
UP_TO = "(up to "


def _counted(done: int, total: int | None, unit: str, elapsed: float, most: bool = False) -> str:
    """``most``: ``total`` is an upper bound (a stage that may stop early), so is the time left."""
    if not total or not done:
        return f"{done} {plural(unit, done)}, {elapsed:.0f} s elapsed"
    left = elapsed / done * (total - done)
    return (f"{done}/{total} {plural(unit, total)}, {elapsed:.0f} s elapsed, {'at most' if most else 'about'} "
            f"{duration_text(left)} left")


class RichTalk(Talk):
    """Live progress bars with an ETA (a terminal); lines through the console."""

    def __init__(self, con: Any):
        super().__init__(write=lambda t: con.print(t, markup=False, highlight=False))
        self.console = con

    def _progress(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        return Progress(TextColumn("      {task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console)

    @_contextmanager
    def bar(self, desc, total, unit="step"):
        with self._progress() as p:
            task = p.add_task(f"{desc} ({plural(unit)})", total=total)
            yield lambda n=1: p.advance(task, n)

    @_contextmanager
    def timer(self, desc, estimate_s):
        import time

        with self._progress() as p:
            task = p.add_task(f"{desc} (seconds, estimated)", total=max(round(estimate_s), 1))
            start = time.monotonic()
            with ticking(0.5, lambda: p.update(task, completed=min(time.monotonic() - start,
                                                                   0.99 * max(estimate_s, 1)))):
                yield
            took = max(round(time.monotonic() - start), 1)
            p.update(task, total=took, completed=took)


def artifact_info(root: str | os.PathLike) -> dict[str, Any]:
    """What an exported artifact is, from its manifest (torch-free)."""
    from .artifact import backends_for, read_manifest
    from .runtime.opener import installed

    m = read_manifest(root)
    runners = backends_for(m.format, m.files)
    return {"path": str(root), "artifact": artifact_label(m), "task": m.task, "arch": m.arch.get("name"),
            "input_size": f"{m.input_size[0]}x{m.input_size[1]}", "max_batch": m.max_batch,
            "outputs": ", ".join(m.outputs), "file_size": sum(f["size"] for f in m.files.values()),
            "runs_on": ", ".join(f"{b}{'' if installed(b) else ' (not installed)'}" for b in runners),
            "verified_rel_l2": m.fidelity.get("rel_l2"), "verified_against": m.fidelity.get("reference"),
            "random_weights": bool(m.options.get("random_weights", False))}
