"""The README's main job: load -> quantize -> export -> predict -> bench, offline, in one command.

Real weights are used when an official checkpoint is on this machine; otherwise a randomly
initialised model in the official layout (announced as such), so the whole chain - shapes,
speed, artifact, runtime - is real and only the predictions are noise. Calibration images are
augmented views of the input image (the only images that are certain to be present offline).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ConfigError
from .spec import TASKS

SAMPLE_IMAGE = Path(__file__).parent / "assets" / "astronaut.jpg"
"""The photo the demo runs on when no image is given (bundled: the demo works offline)."""

# Without real weights the chain runs a small model so the demo takes minutes, not an hour.
RANDOM_DEFAULT = ("0.1b", (512, 384))
REAL_DEFAULT_SIZE = "0.4b"


@dataclass
class ChainResult:
    """What each stage produced (the CLI prints it; tests check it)."""

    model_source: str
    real_weights: bool
    artifact: Path | None = None
    report: Any = None
    results: list = field(default_factory=list)
    bench_rows: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def calibration_views(image: np.ndarray, count: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Augmented views of one RGB uint8 image: random crops (60-100 % of each side), mirror
    flips and brightness/contrast jitter. Enough to calibrate activation ranges for a demo; use a
    folder of real task images (``--calib``) for a deployment."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ConfigError(f"calibration views need an RGB uint8 image, got {image.dtype} {image.shape}")
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    views = [image]
    while len(views) < count:
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        view = image[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            view = view[:, ::-1]
        gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
        views.append(np.clip(view.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8))
    return views


def default_format() -> str:
    """The artifact format this machine runs fastest on the CPU: OpenVINO IR when OpenVINO is
    installed (int8 kernels with VNNI/AMX), else ONNX."""
    import importlib.util

    return "openvino" if importlib.util.find_spec("openvino") is not None else "onnx"


def run_chain(task: str = "seg", size: str = "auto", checkpoint: str | None = None, image: Path | None = None,
              output: Path = Path("sapiens2_demo"), scheme: str = "int8", format: str = "auto",
              input_size: tuple[int, int] | None = None, calib_count: int = 8, bench_runs: int = 3,
              bench: bool = True, say: Callable[[str], None] = print) -> ChainResult:
    """Run every stage, announcing each through ``say``; returns what each produced."""
    from . import load_model
    from .exporters import export
    from .models.random_init import random_model
    from .runtime.outputs import run_predictions
    from .runtime.predictor import Predictor
    from .runtime.torch_backend import default_checkpoint
    from .spec import DEFAULT_INPUT_SIZE
    from .tasks import load_image
    from .workflows import quantize_and_save

    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    fmt = default_format() if format == "auto" else format
    image_path = Path(image) if image is not None else SAMPLE_IMAGE
    picture = load_image(image_path)
    output = Path(output)
    timings: dict[str, float] = {}

    # 1. load
    t = time.perf_counter()
    source = checkpoint or default_checkpoint(task, REAL_DEFAULT_SIZE if size == "auto" else size)
    if source is not None:
        model = load_model(source, task=task)
        result = ChainResult(model_source=str(source), real_weights=True)
        say(f"[1/5] load: real weights {source}")
    else:
        arch, random_size = (RANDOM_DEFAULT if size == "auto" else (size, DEFAULT_INPUT_SIZE))
        model = random_model(arch, task, input_size=input_size or random_size)
        input_size = input_size or random_size
        arch = model.arch.name
        result = ChainResult(model_source=f"random {arch} {task}", real_weights=False)
        say(f"[1/5] load: RANDOM WEIGHTS - no {task} checkpoint found on this machine (looked for "
            f"facebook/sapiens2-{task}-{REAL_DEFAULT_SIZE if size == 'auto' else size} under "
            "$SAPIENS_CHECKPOINT_ROOT and in the Hugging Face cache). A randomly initialised "
            f"{arch} model in the official layout: shapes, speed and every stage are real, the predictions are noise.")
    size_hw = tuple(input_size or model.input_size)
    n_params = sum(p.numel() for p in model.parameters())
    timings["load_s"] = time.perf_counter() - t
    say(f"      {model.arch.name} {model.task}, {n_params / 1e6:.1f} M parameters, input {size_hw[0]}x{size_hw[1]}, "
        f"{timings['load_s']:.1f} s")

    # 2. quantize
    t = time.perf_counter()
    views = calibration_views(picture, calib_count)
    held_out = calibration_views(picture, 4, seed=1)[1:]  # other crops than the calibration ones
    # Static activation scales: the form ONNX Runtime and OpenVINO run with int8 kernels.
    extra = {"activation_mode": "static"} if scheme in ("int8", "fp8") else {}
    output.mkdir(parents=True, exist_ok=True)
    qmodel, report = quantize_and_save(
        model, scheme, views, output / f"model_{scheme}.safetensors", held_out=held_out,
        held_out_source=f"{len(held_out)} other augmented views of {image_path.name}", input_size=size_hw,
        calibration_size=calib_count, eval_samples=len(held_out), progress=False, **extra)
    result.report = report
    timings["quantize_s"] = time.perf_counter() - t
    say(f"[2/5] quantize: {scheme} with {len(views)} calibration views of {image_path.name}, "
        f"{timings['quantize_s']:.1f} s -> {output / f'model_{scheme}.safetensors'}")
    say("      " + _fidelity_line(report))

    # 3. export
    t = time.perf_counter()
    artifact = export(qmodel, output / f"{fmt}-{scheme}", format=fmt, input_size=size_hw, max_batch=1,
                      overwrite=True)
    result.artifact = artifact
    timings["export_s"] = time.perf_counter() - t
    from .artifact import read_manifest

    manifest = read_manifest(artifact, verify=False)
    say(f"[3/5] export: {fmt} {manifest.precision} -> {artifact} ({_dir_mb(artifact):.1f} MB), verified against "
        f"torch: rel L2 {manifest.fidelity.get('rel_l2', float('nan')):.2e}, {timings['export_s']:.1f} s")

    # 4. predict through the runtime, from the artifact
    t = time.perf_counter()
    pred = Predictor(artifact)
    result.results = run_predictions(pred, [image_path], output / "predictions")
    timings["predict_s"] = time.perf_counter() - t
    say(f"[4/5] predict: {pred.runner.describe()} ({pred.backend_reason}), {timings['predict_s']:.1f} s -> "
        f"{output / 'predictions'}")

    # 5. bench: the artifact against torch fp32 eager, each in its own process
    if bench:
        from . import bench as benchmod

        t = time.perf_counter()
        result.bench_rows = benchmod.run([artifact], ["auto"], warmup=1, runs=bench_runs)
        benchmod.write_reports(result.bench_rows, output / "bench",
                               f"sapiens2-edge bench {artifact} --runs {bench_runs} --warmup 1")
        timings["bench_s"] = time.perf_counter() - t
        say(f"[5/5] bench: {len(result.bench_rows)} rows in {timings['bench_s']:.1f} s -> {output / 'bench'}")
    result.timings = timings
    return result


def _fidelity_line(report) -> str:
    fid = dict(report.fidelity or {})
    keys = [k for k in fid if isinstance(fid[k], float) and not k.endswith(("_max_px", "_p95_px"))][:4]
    parts = [f"{k} {fid[k]:.4g}" for k in keys]
    return "fidelity vs float: " + (", ".join(parts) if parts else "n/a")


def _dir_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file()) / 1e6
