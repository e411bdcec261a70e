"""The README's main job: load -> quantize -> export -> predict -> bench, offline, in one command.

Real weights are used when an official checkpoint is on this machine; otherwise a randomly
initialised model in the official layout (announced as such), so the whole chain - shapes,
speed, artifact, runtime - is real and only the predictions are noise. Calibration images are
augmented views of the input image (the only images that are certain to be present offline).

The chain talks through a :class:`~sapiens2_edge.workflows.Talk`: each stage says what it is about
to do before doing it, long stages show progress with an ETA, and :func:`summary_lines` says at
the end what ran, where the files are and what each number is measured against.
"""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .spec import NUM_PREFIX_TOKENS, PATCH_SIZE, TASKS
from .workflows import Talk, artifact_label, check_scheme_format, duration_text

SAMPLE_IMAGE = Path(__file__).parent / "assets" / "astronaut.jpg"
"""The photo the demo runs on when no image is given (bundled: the demo works offline)."""

# Without real weights the chain runs a small model so the demo takes minutes, not an hour.
RANDOM_DEFAULT = ("0.1b", (512, 384))
REAL_DEFAULT_SIZE = "0.4b"
#: Schemes that quantize activations from calibration data; the others need none.
CALIBRATED_SCHEMES = ("int8", "fp8")
#: Schemes the demo offers (``mixed`` needs a budget, which the quantize command takes); ``auto`` is
#: :func:`scheme_reason`'s choice for this machine, ``fp32`` exports the float model unquantized.
DEMO_SCHEMES = ("auto", "fp32", "fp16", "int8-weight", "int8", "fp8")
#: Formats whose artifacts the demo runs on this machine's CPU (the others are made for phones).
HOST_FORMATS = ("openvino", "onnx", "native", "torch")
HELD_OUT_VIEWS = 3


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
    estimate: dict[str, float] = field(default_factory=dict)
    manifest: Any = None
    facts: dict[str, Any] = field(default_factory=dict)


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


#: Measured on an AVX2-only EPYC (no VNNI / AMX), 0.1b seg at 512x384, batch 1, interleaved medians
#: (benchmarks/results/cpu_peers.md): ONNX Runtime int8 1.53 s, OpenVINO fp32 1.58 s (OpenVINO's
#: defaults 1.57 s), ONNX Runtime fp32 1.83 s, OpenVINO int8 1.83 s, native fp32 1.84 s, native int8 1.96 s.
AVX2_TIMES = "0.1b at 512x384: ONNX Runtime int8 1.53 s, OpenVINO fp32 1.58 s, OpenVINO int8 1.83 s"
#: The dense tasks' heads are 3x3 convolutions (two thirds of a 0.1b normal forward), which the native
#: engine runs by Winograd: on the same kind of CPU its fp32 artifact is the fastest of every runtime.
AVX2_DENSE_TIMES = ("0.1b normal at 512x384: native fp32 2.77 s, ONNX Runtime int8 3.41 s, OpenVINO fp32 3.70 s, "
                    "torch 4.45 s")


def native_winograd() -> bool:
    """Whether the native engine runs here with oneDNN (its channels-last heads and Winograd convolutions)."""
    from .errors import BackendUnavailableError
    from .runtime.native_backend import onednn_status

    try:
        return onednn_status()[0]
    except BackendUnavailableError:  # no extension built: no native artifact here
        return False


def format_reason(format: str, int8_dot: tuple[bool, str] | None = None, task: str = "seg",
                  winograd: bool | None = None) -> tuple[str, str]:
    """(the artifact format the demo exports, why). ``auto``: OpenVINO IR where OpenVINO is installed
    and the CPU has int8 dot products (VNNI, AMX); on a CPU without them OpenVINO runs int8 layers as
    float GEMMs on decompressed weights while ONNX Runtime has exact AVX2 int8 kernels, so ONNX there
    (and wherever OpenVINO is not installed), except for a dense task (normal, pointmap, albedo) where
    the native engine runs on oneDNN: its Winograd 3x3 convolutions make its fp32 artifact the fastest
    there. ``int8_dot``: :func:`~sapiens2_edge.cpu_features.int8_dot_products` (read if None);
    ``winograd``: :func:`native_winograd` (read if None, and only for a dense task)."""
    import importlib.util

    from .cpu_features import int8_dot_products
    from .runtime.native_backend import DENSE_3X3_TASKS

    if format != "auto":
        return format, "asked for"
    openvino, ort = (importlib.util.find_spec(p) is not None for p in ("openvino", "onnxruntime"))
    has, evidence = int8_dot if int8_dot is not None else int8_dot_products()
    if not has and task in DENSE_3X3_TASKS and (winograd if winograd is not None else native_winograd()):
        return "native", (f"auto: {evidence}, and a {task} head is 3x3 convolutions, which the native engine runs "
                          f"by Winograd (4x fewer multiply-adds), so its fp32 artifact is the fastest here "
                          f"({AVX2_DENSE_TIMES})")
    if openvino and (has or not ort):
        return "openvino", ("auto: OpenVINO is installed (its int8 kernels, on VNNI/AMX where the CPU has them; "
                            "bf16 float ops where the CPU has native bf16)")
    if openvino:
        return "onnx", (f"auto: {evidence}, so OpenVINO has no int8 kernels here while ONNX Runtime's int8 kernels "
                        f"make an int8 ONNX artifact the fastest ({AVX2_TIMES})")
    return "onnx", "auto: OpenVINO is not installed, ONNX Runtime runs ONNX"


def scheme_reason(scheme: str, fmt: str, int8_dot: tuple[bool, str] | None = None,
                  task: str = "seg") -> tuple[str, str]:
    """(the scheme the demo quantizes with, why): ``auto`` is the fastest artifact of ``fmt`` for this
    machine that keeps the demo's fidelity. ONNX Runtime runs int8 faster than float on every x86 CPU
    kind; OpenVINO, the native engine and torch only where the CPU has int8 dot products (VNNI, AMX).
    Without them OpenVINO multiplies decompressed int8 weights in float, and the native engine and
    torch sum int8 products as float32 or in a plain loop: fp32 is the fastest artifact of those
    formats there. ``int8_dot``: as in :func:`format_reason`."""
    from .cpu_features import int8_dot_products

    if scheme != "auto":
        return scheme, "asked for"
    if fmt not in HOST_FORMATS:
        from .artifact.formats import get_format

        made = get_format(fmt)
        if "int8" in made.schemes and made.static_ranges:
            return "int8", f"auto: a {fmt} artifact runs on a phone, whose runtime has int8 kernels"
        return "int8-weight", f"auto: a {fmt} artifact takes int8 weights, not calibrated int8 activations"
    if fmt == "onnx":
        return "int8", ("auto: ONNX Runtime runs int8 faster than fp32 with or without VNNI / AMX (on an AVX2-only "
                        "CPU at 0.1b: 1.53 s vs 1.83 s)")
    has, evidence = int8_dot if int8_dot is not None else int8_dot_products()
    if has:
        return "int8", f"auto: {evidence}, so int8 kernels make an int8 artifact the fastest here"
    from .runtime.native_backend import DENSE_3X3_TASKS

    times = AVX2_DENSE_TIMES if fmt == "native" and task in DENSE_3X3_TASKS else AVX2_TIMES
    return "fp32", (f"auto: {evidence} (no int8 dot products), so {fmt} computes int8 no faster than float here and "
                    f"an fp32 artifact is its fastest ({times})")


# --- the estimate ---------------------------------------------------------------------------------
def forward_gflop(arch: Any, input_size: tuple[int, int], attention: bool = True) -> float:
    """Approximate GFLOP of one forward pass: 2 x backbone weights x tokens for the linears plus
    (``attention``) 4 x depth x tokens^2 x width for attention (heads and normalisation left out)."""
    from .models.arch import backbone_shapes, count_params

    tokens = (input_size[0] // PATCH_SIZE) * (input_size[1] // PATCH_SIZE) + NUM_PREFIX_TOKENS
    linear = 2.0 * count_params(backbone_shapes(arch)) * tokens
    return (linear + (4.0 * arch.depth * tokens**2 * arch.embed_dim if attention else 0.0)) / 1e9


def machine_gflops(seconds: float = 0.3) -> float:
    """fp32 matmul GFLOP/s of this machine now (torch, its current thread count), measured for
    about ``seconds``."""
    import torch

    n = 1024  # about the size of the model's GEMMs (smaller ones run at a fraction of the rate)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        calls += 1
    return 2.0 * n**3 * calls / (time.perf_counter() - start) / 1e9


# Forward passes each stage runs, in units of one float forward; a fake-quantized torch forward
# costs about two. Export traces and verifies (about two forwards) plus a fixed cost of the
# format's converters (tracing and graph passes do not scale with FLOPs); bench runs the torch
# baseline and the (faster) artifact. Calibrated on the default demo (0.1b at 512x384, openvino
# int8) on a busy 2-core machine: 385 s quantize, 99 s export, 39 s bench.
MODEL_EFFICIENCY = 0.7  # a transformer forward reaches about 70 % of the 1024^3 matmul rate
QUANT_FORWARD = 2.0
EXPORT_FORWARDS = 2.0
EXPORT_FIXED_S = {"onnx": 50.0, "openvino": 80.0, "torch": 60.0, "coreml": 100.0, "native": 5.0, "litert": 120.0}
BENCH_FORWARDS_PER_RUN = 1.3  # the fp32 baseline's call plus the artifact's


def estimate_stages(arch: Any, input_size: tuple[int, int], scheme: str, fmt: str, calib_count: int,
                    bench_runs: int, bench: bool, gflops: float | None = None) -> dict[str, float]:
    """Seconds each stage should take on this machine (a rough estimate from FLOPs, not a promise)."""
    forward_s = forward_gflop(arch, input_size) / ((gflops or machine_gflops()) * MODEL_EFFICIENCY)
    evaluate = HELD_OUT_VIEWS * (1 + QUANT_FORWARD)
    # two backbone-only calibration passes (SmoothQuant maxima, then the percentile ranges of the
    # smoothed inputs); the report is measured on the held-out forwards of ``evaluate``
    calibrate = calib_count * 2 if scheme in CALIBRATED_SCHEMES else 0
    stages = {} if scheme == "fp32" else {"quantize": forward_s * (calibrate + evaluate)}
    stages.update(export=forward_s * EXPORT_FORWARDS + EXPORT_FIXED_S[fmt], predict=forward_s * 2)
    if bench:
        stages["bench"] = forward_s * BENCH_FORWARDS_PER_RUN * (1 + bench_runs) + 10.0
    return stages


# --- the chain ------------------------------------------------------------------------------------
def run_chain(task: str = "seg", size: str = "auto", checkpoint: str | None = None, image: Path | None = None,
              output: Path = Path("sapiens2_demo"), scheme: str = "auto", format: str = "auto",
              input_size: tuple[int, int] | None = None, calib_count: int = 8, bench_runs: int = 3,
              bench: bool = True, talk: Talk | None = None) -> ChainResult:
    """Run every stage, announcing each through ``talk`` before it starts; returns what each produced."""
    from .cpu_features import int8_dot_products
    from .workflows import require

    talk = talk or Talk()
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if scheme not in DEMO_SCHEMES:
        raise ConfigError(f"the demo quantizes with {', '.join(DEMO_SCHEMES)}, got --scheme {scheme!r}")
    if bench_runs < 1:
        raise ConfigError(f"--runs must be at least 1 (the timed runs per bench row), got {bench_runs}")
    int8_dot = int8_dot_products()  # read once: every choice of this run follows the same answer
    fmt, why = format_reason(format, int8_dot, task)
    scheme, scheme_why = scheme_reason(scheme, fmt, int8_dot, task)
    check_scheme_format(scheme, fmt, static=scheme in CALIBRATED_SCHEMES)  # before minutes of quantizing
    require("torch", "the demo (it loads, quantizes and exports a torch model)", "export")
    from .tasks import load_image

    image_path = Path(image) if image is not None else SAMPLE_IMAGE
    picture = load_image(image_path)
    output = Path(output)
    start = time.perf_counter()
    model, result = _load(task, size, checkpoint, input_size, talk)
    result.facts.update(format_reason=why, scheme=scheme, scheme_reason=scheme_why, int8_dot_products=int8_dot[0])
    size_hw = result.facts["input_size"]
    result.estimate = estimate_stages(model.arch, size_hw, scheme, fmt, calib_count, bench_runs, bench)
    total = sum(result.estimate.values())
    talk.say(f"      estimate for the rest: about {duration_text(total)} on this machine (from the model's FLOPs "
             f"and a matmul test; {', '.join(f'{k} ~{duration_text(v)}' for k, v in result.estimate.items())})")
    qmodel = _quantize(model, scheme, fmt, picture, image_path, output, size_hw, calib_count, result, talk)
    _export(qmodel, model, fmt, scheme, output, size_hw, result, talk)
    _predict(image_path, output, result, talk)
    if bench:
        _bench(output, bench_runs, result, talk)
    result.timings["total_s"] = time.perf_counter() - start
    return result


def _load(task, size, checkpoint, input_size, talk):
    from . import load_model
    from .models.random_init import random_model
    from .runtime.torch_backend import default_checkpoint
    from .spec import DEFAULT_INPUT_SIZE

    t = time.perf_counter()
    wanted = REAL_DEFAULT_SIZE if size == "auto" else size
    source = checkpoint or default_checkpoint(task, wanted)
    if source is not None:
        talk.say(f"[1/5] load: real weights {source}")
        model = load_model(source, task=task)
        result = ChainResult(model_source=str(source), real_weights=True)
    else:
        arch, random_size = (RANDOM_DEFAULT if size == "auto" else (size, DEFAULT_INPUT_SIZE))
        talk.say(f"[1/5] load: RANDOM WEIGHTS - no {task} checkpoint found on this machine (looked for "
                 f"facebook/sapiens2-{task}-{wanted} under $SAPIENS_CHECKPOINT_ROOT and in the Hugging Face cache). "
                 f"Building a randomly initialised {arch} model in the official layout: shapes, speed and every "
                 "stage are real, the predictions are noise.")
        input_size = input_size or random_size
        model = random_model(arch, task, input_size=input_size)
        result = ChainResult(model_source=f"random {model.arch.name} {task}", real_weights=False)
    size_hw = tuple(input_size or model.input_size)
    n_params = sum(p.numel() for p in model.parameters())
    result.timings["load_s"] = time.perf_counter() - t
    result.facts.update(arch=model.arch.name, task=model.task, parameters=n_params, input_size=size_hw)
    talk.say(f"      {model.arch.name} {model.task}, {n_params / 1e6:.1f} M parameters, input "
             f"{size_hw[0]}x{size_hw[1]}, loaded in {result.timings['load_s']:.1f} s")
    return model, result


def _quantize(model, scheme, fmt, picture, image_path, output, size_hw, calib_count, result, talk):
    from .artifact import FORMATS
    from .quantization.head_int8 import deconv_names
    from .workflows import quantize_and_save

    t = time.perf_counter()
    result.facts.update(calibrated=False, calib_count=0, image=image_path)
    if scheme == "fp32":
        talk.say(f"[2/5] quantize: none, the fp32 model goes to the export ({result.facts['scheme_reason']})")
        return model
    calibrated = scheme in CALIBRATED_SCHEMES
    # int8 attention inputs: OpenVINO runs the attention with int8 products (faster at the same fidelity);
    # every format that takes the demo's static int8 carries them (LiteRT, which refuses them, takes no int8).
    # The pose / seg head's transposed convolutions in int8 where the format carries them and the CPU has
    # int8 dot products (OpenVINO's int8 convolution kernels; the trained fixtures keep the int8 gates);
    # without VNNI / AMX the exported head computes in float anyway, so int8 would only add its rounding.
    attention = "int8" if scheme == "int8" else "float"
    head = ("int8" if scheme == "int8" and FORMATS[fmt].int8_head and deconv_names(model)
            and result.facts["int8_dot_products"] else "float")
    held_out = calibration_views(picture, HELD_OUT_VIEWS + 1, seed=1)[1:]  # other crops than the calibration ones
    path = output / f"model_{scheme}.safetensors"
    parts = ["static activations"] + [w for w, on in (("int8 attention inputs", attention == "int8"),
                                                      ("an int8 head", head == "int8")) if on]
    what = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    how = (f"{what} calibrated on "
           f"{calib_count} augmented views of {image_path.name}" if calibrated
           else "weights only: no calibration data needed")
    talk.say(f"[2/5] quantize: {scheme} ({how}), then compare with the fp32 model on {len(held_out)} other views "
             f"(about {duration_text(result.estimate['quantize'])}, estimate)")
    talk.say(f"      {scheme}: {result.facts['scheme_reason']}")
    # Static activation scales: the form ONNX Runtime and OpenVINO run with int8 kernels.
    extra = {"activation_mode": "static", "calibration_size": calib_count, "attention": attention,
             "head": head} if calibrated else {}
    output.mkdir(parents=True, exist_ok=True)
    qmodel, report = quantize_and_save(
        model, scheme, calibration_views(picture, calib_count) if calibrated else None, path, held_out=held_out,
        held_out_source=f"{len(held_out)} other augmented views of {image_path.name}", input_size=size_hw,
        eval_samples=len(held_out), progress=talk.iterate, **extra)
    result.report = report
    result.timings["quantize_s"] = time.perf_counter() - t
    result.facts.update(quantized=path, calibrated=calibrated, calib_count=calib_count if calibrated else 0,
                        image=image_path)
    talk.say(f"      {scheme} checkpoint {path} in {result.timings['quantize_s']:.1f} s; {fidelity_text(report)}")
    return qmodel


def _export(qmodel, float_model, fmt, scheme, output, size_hw, result, talk):
    from .artifact import read_manifest
    from .exporters import export

    t = time.perf_counter()
    talk.say(f"[3/5] export: {fmt} {scheme} artifact, then verify it against the torch model it comes from")
    talk.say(f"      {fmt}: {result.facts.get('format_reason', 'asked for')}")
    with talk.timer(f"export {fmt} + verify", result.estimate["export"]):
        # with the float model at hand, a bf16 run of the quantized artifact is judged by its distance to
        # the float model (bf16 flips int8 roundings, which moves it off the recipe's exact outputs but
        # no further from the float model: see exporters/openvino_export.py)
        artifact = export(qmodel, output / f"{fmt}-{scheme}", format=fmt, input_size=size_hw, max_batch=1,
                          overwrite=True, float_model=None if qmodel is float_model else float_model)
    result.artifact = artifact
    result.timings["export_s"] = time.perf_counter() - t
    m = result.manifest = read_manifest(artifact, verify=False)
    talk.say(f"      {artifact} ({artifact_label(m)}, {_dir_mb(artifact):.1f} MB) in {result.timings['export_s']:.1f} s; "
             f"rel L2 {m.fidelity.get('rel_l2', float('nan')):.1e} vs {m.fidelity.get('reference', 'torch')}")
    for line in precision_checks_text(m.options.get("inference_precision") or {}):
        talk.say(f"      {line}")


def precision_checks_text(policy: dict) -> list[str]:
    """One line per runtime precision the export verified: what it was compared with and the outcome."""
    lines = []
    for precision, check in sorted((policy.get("fidelity") or {}).items()):
        if "rel_l2" not in check:
            lines.append(f"{precision} run: not checked here ({check.get('not_checked', 'no check recorded')})")
            continue
        verdict = "passed" if check.get("passed") else "failed: not used"
        lines.append(f"{precision} run: rel L2 {check.get('rel_l2', float('nan')):.3g} vs {check.get('against', '?')} "
                     f"(tolerance {check.get('tolerance', float('nan')):.3g}) {verdict}")
    return lines


def _predict(image_path, output, result, talk):
    from .runtime.outputs import describe_result, run_predictions
    from .runtime.predictor import Predictor

    t = time.perf_counter()
    talk.say(f"[4/5] predict: {image_path.name} through the runtime, from the artifact")
    pred = Predictor(result.artifact)
    result.results = run_predictions(pred, [image_path], output / "predictions")
    result.timings["predict_s"] = time.perf_counter() - t
    result.facts["backend"] = pred.backend
    talk.say(f"      backend {pred.backend} ({pred.backend_reason}): {pred.runner.describe()}")
    talk.say(f"      on {pred.backend} in {result.timings['predict_s']:.1f} s: {describe_result(result.results[0])}")


def _bench(output, bench_runs, result, talk):
    from . import bench as benchmod

    t = time.perf_counter()
    talk.say(f"[5/5] bench: the artifact against torch fp32 eager, each in its own process, 1 warm-up + "
             f"{bench_runs} timed runs (about {duration_text(result.estimate['bench'])}, estimate)")
    result.bench_rows = benchmod.run([result.artifact], ["auto"], warmup=1, runs=bench_runs, talk=talk)
    benchmod.write_reports(result.bench_rows, output / "bench",
                           f"sapiens2-edge bench {result.artifact} --runs {bench_runs} --warmup 1")
    result.timings["bench_s"] = time.perf_counter() - t


# --- what it says at the end ----------------------------------------------------------------------
METRICS = {"seg_agreement": "pixels with the same class", "seg_miou": "mean IoU",
           "pose_mean_px": "mean keypoint shift (px)", "normal_mean_deg": "mean normal angle (deg)",
           "pointmap_rel_l1": "pointmap rel L1", "albedo_psnr_db": "albedo PSNR (dB)",
           "sqnr_db": "output SQNR (dB)", "rel_l2": "output rel L2"}


def fidelity_text(report) -> str:
    """The quantized model's task fidelity, saying what it was measured against."""
    fid = dict(report.fidelity or {})
    parts = [f"{words} {fid[k]:.4g}" for k, words in METRICS.items() if isinstance(fid.get(k), float)][:3]
    where = fid.get("evaluated_on", "held-out inputs")
    return f"vs the torch fp32 model on {where}: " + (", ".join(parts) if parts else "n/a")


def summary_lines(res: ChainResult, output: Path, width: int = 80) -> list[str]:
    """What ran, where the files are and what each number is measured against, wrapped to ``width``."""
    from .runtime.outputs import describe_result

    f, rep, m = res.facts, res.report, res.manifest
    h, w = f["input_size"]
    items = [("model", f"{res.model_source}, {f['parameters'] / 1e6:.1f} M parameters, input {h}x{w}"
              + ("" if res.real_weights else " - RANDOM WEIGHTS: the predictions are noise"))]
    if rep is None:
        items.append(("quantized", f"no: {f['scheme_reason']}"))
    else:
        items.append(("quantized", f"{rep.scheme}"
                      + (f", calibrated on {f['calib_count']} views of {f['image'].name}" if f["calibrated"]
                         else ", weights only (no calibration)")
                      + f"; {rep.size_before_bytes / 1e6:.1f} MB -> {rep.size_after_bytes / 1e6:.1f} MB; "
                      f"{fidelity_text(rep)}; saved as {f['quantized']}"))
    items.append(("artifact", f"{res.artifact} ({artifact_label(m)}, {_dir_mb(res.artifact):.1f} MB); its outputs "
                  f"vs {m.fidelity.get('reference', 'the torch model')} on the same input: rel L2 "
                  f"{m.fidelity.get('rel_l2', float('nan')):.1e} (tolerance {m.fidelity.get('tolerance', 0):g})"))
    items.append(("predicted", f"{f['image'].name} on {f['backend']}: {describe_result(res.results[0])}; "
                  f"overlay, arrays and JSON in {output / 'predictions'}"))
    if res.bench_rows:
        base, art = res.bench_rows[0], res.bench_rows[-1]
        items.append(("bench", f"{artifact_label(m)} on {art['backend']}: {art['median_s']:.3f} s median per image vs "
                      f"{base['median_s']:.3f} s for torch fp32 eager = {art['speedup']:.2f}x the speed; peak memory "
                      f"{art['peak_rss_mb']:.0f} MB vs {base['peak_rss_mb']:.0f} MB; tables in {output / 'bench'}"))
    estimate = sum(res.estimate.values())
    items.append(("time", f"{duration_text(res.timings.get('total_s', 0))} in all ("
                  + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in res.timings.items() if k != "total_s")
                  + f"); estimated {duration_text(estimate)} after loading"))
    lines = ["summary"]
    for key, text in items:
        lines += textwrap.wrap(text, width, initial_indent=f"  {key + ':':<11}", subsequent_indent=" " * 13,
                               break_on_hyphens=False)
    return lines


def _dir_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file()) / 1e6
