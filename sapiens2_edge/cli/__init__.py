"""``sapiens2-edge`` command line: info, init-random, convert, predict, quantize, export, verify, bench, demo.

Parsing and printing only: every command calls the library (``workflows``, ``runtime``,
``exporters``, ``bench``, ``demo``) and prints what it returns. Option choices come from the
registries the library uses (formats, schemes, tasks, backends), so help cannot drift from the
code; every failure prints one line ``error: <TypedError>: <what was wrong and what was expected>``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .._version import __version__
from ..errors import ConfigError
from ..runtime.inputs import VIDEO_SUFFIXES, is_video
from ..workflows import QUANT_SCHEMES, RichTalk, Talk, artifact_info, require
from .export_checks import WEIGHT_ONLY, check_export_flags, given_options
from .options import (
    ATTENTION_HELP,
    CALIB_INPUT_HELP,
    CALIB_PRECISION_HELP,
    EVAL_MIN_HELP,
    GRAPH_HELP,
    HEAD_HELP,
    TORCH_PRECISION_HELP,
    Activations,
    Arch,
    AttentionInputs,
    Backend,
    CalibPrecision,
    DemoFormat,
    DemoScheme,
    DemoSize,
    Dtype,
    ExportScheme,
    Format,
    HeadPrecision,
    OnnxGraph,
    Scheme,
    Task,
    TaskOrNone,
    TorchPrecision,
    _echo_error,
    _Group,
    detector_option,
    error_line,
    opt_in_parts,
    parse_size,
)
from .tables import report_table

DEFAULT_GROUP_SIZE = 32  # = quantization.config.DEFAULT_GROUP_SIZE (tested); the CLI imports no torch

app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Edge inference for Meta's Sapiens2 models: inspect, quantize, export, predict, bench.")
console = Console(stderr=False, highlight=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sapiens2-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Edge inference for Meta's Sapiens2 models: inspect, quantize, export, predict, bench."""


def say(text: str) -> None:
    console.print(text, markup=False, highlight=False)


def _talk() -> Talk:
    return RichTalk(console) if console.is_terminal else Talk(write=say)


def _progress_bar(desc: str):
    """A tqdm bar over a list when stderr is a terminal."""
    from tqdm import tqdm

    return lambda items: tqdm(items, desc=desc, unit="img", disable=not sys.stderr.isatty())


def _json(data) -> None:
    typer.echo(json.dumps(data, indent=1, default=str))


# --- info -------------------------------------------------------------------------------------------
@app.command()
def info(checkpoint: str = typer.Argument(..., help=".safetensors file, directory, Hugging Face id, or an "
                                                    "exported artifact directory"),
         as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """Describe a checkpoint from its safetensors header alone (no weights are read), or an
    artifact from its manifest."""
    from ..artifact import is_artifact

    if is_artifact(checkpoint):
        data = artifact_info(checkpoint)
    else:
        from ..workflows import checkpoint_info

        data = checkpoint_info(checkpoint)
    if as_json:
        _json(data)
        return
    table = Table(title=Path(data["path"]).name, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for k, v in data.items():
        if k in ("parameters", "backbone_parameters", "head_parameters"):
            v = f"{v:,} ({v / 1e6:.1f} M)"
        elif k == "file_size":
            v = f"{v / 2**20:.1f} MiB"
        elif k == "dtypes":
            v = ", ".join(f"{d}: {n}" for d, n in v.items())
        table.add_row(k, str(v))
    console.print(table)


# --- init-random ------------------------------------------------------------------------------------
@app.command(name="init-random")
def init_random(output: Path = typer.Argument(..., help="the .safetensors file to write"),
                arch: Arch = typer.Option("0.1b", help="architecture"),
                task: TaskOrNone = typer.Option("seg", help="head (none: a pretrain backbone)"),
                input_size: Optional[str] = typer.Option(None, help="HxW the pointmap head is built for and the "
                                                                    "model's default input (default 1024x768)"),
                seed: int = typer.Option(0, help="random seed (the same seed writes the same weights)"),
                dtype: Dtype = typer.Option("fp32", help="dtype of the stored weights"),
                overwrite: bool = typer.Option(False, help="replace an existing file")) -> None:
    """Write a randomly initialised checkpoint in the official layout, to try every command without
    weights (its metadata marks it as random; overlays say RANDOM WEIGHTS)."""
    require("torch", "init-random")
    from ..models.random_init import write_random_checkpoint

    start = time.perf_counter()
    path = write_random_checkpoint(output, str(arch), str(task), input_size=parse_size(input_size), seed=seed,
                                   dtype=str(dtype), overwrite=overwrite)
    say(f"wrote RANDOM WEIGHTS {arch} {task} checkpoint {path} ({path.stat().st_size / 1e6:.1f} MB, "
        f"seed {seed}, {dtype}) in {time.perf_counter() - start:.1f} s; predictions from it are noise")


# --- convert ----------------------------------------------------------------------------------------
@app.command()
def convert(source: Path = typer.Argument(..., help="the official detector checkpoint, e.g. detector/rtmdet_m.pth"),
            output: Path = typer.Argument(..., help="the .safetensors file to write"),
            overwrite: bool = typer.Option(False, help="replace an existing file")) -> None:
    """Convert the RTMDet-m person detector's .pth to safetensors, once (read with torch's restricted
    unpickler; every other command reads safetensors only)."""
    from ..detection.checkpoint import convert_checkpoint

    path = convert_checkpoint(source, output, overwrite=overwrite)
    say(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): RTMDet-m person detector, load it with "
        "sapiens2_edge.load_detector")


# --- predict ----------------------------------------------------------------------------------------
@app.command()
def predict(checkpoint: str = typer.Argument(..., help="an exported artifact directory, or a checkpoint "
                                                       "(.safetensors file, directory or Hugging Face id; needs torch)"),
            input: Optional[str] = typer.Option(None, "--input", "-i", help="an image, a folder of images, a video "
                                                "file (" + ", ".join(VIDEO_SUFFIXES) + ") or a stream URL"),
            output: Path = typer.Option(..., "--output", "-o", help="folder for overlays and raw results"),
            camera: Optional[int] = typer.Option(None, "--camera", help="run live on this camera index instead"),
            detector: Optional[str] = typer.Option(None, "--detector", help="pose: person detector (RTMDet-m "
                                                   ".safetensors from `convert`, or an exported .onnx); none: "
                                                   "the whole image is one person"),
            detect_every: int = typer.Option(1, "--detect-every", help="video/camera pose: run the detector "
                                             "every N frames, track in between"),
            smooth: bool = typer.Option(False, "--smooth", help="video/camera pose: One-Euro keypoint smoothing"),
            boxes: Optional[Path] = typer.Option(None, "--boxes", help="pose: JSON {image name: [[x1,y1,x2,y2], ...]}"),
            device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N"),
            input_size: Optional[str] = typer.Option(None, help="network input HxW (default: the model's)"),
            no_flip: bool = typer.Option(False, "--no-flip", help="pose: skip the flip test"),
            backend: Backend = typer.Option("auto", help="runtime for an artifact (auto: the best installed one)"),
            precision: Optional[TorchPrecision] = typer.Option(None, help=TORCH_PRECISION_HELP),
            skip_errors: bool = typer.Option(True, "--skip-errors/--fail-fast",
                                             help="on a bad image: report it and go on (default), or stop"),
            as_json: bool = typer.Option(False, "--json", help="print a JSON summary instead of text"),
            ray: bool = typer.Option(False, "--ray", help="run on a Ray cluster: a folder / glob of images and "
                                     "videos to resumable Parquet rows (pip install 'sapiens2-edge[ray]')"),
            address: Optional[str] = typer.Option(None, help="--ray: a running cluster (auto, ray://host:port)"),
            concurrency: Optional[int] = typer.Option(None, help="--ray: actors, each with its own model (default 1)"),
            gpus: Optional[float] = typer.Option(None, "--gpus-per-actor", help="--ray: GPUs per actor (0.5 shares)")
            ) -> None:
    """Run an exported artifact or a task checkpoint on an image or a folder; write overlay PNGs,
    .npy arrays and JSON (--ray: Parquet rows, see the README's scale-out section)."""
    from .ray_predict import check_options, run_ray

    check_options(ray, address, concurrency, gpus)
    precision = None if precision is None else str(precision)
    if ray:
        raise typer.Exit(run_ray(checkpoint, input, output, camera, boxes, skip_errors, detector, address, concurrency,
                                 gpus, str(backend), device, parse_size(input_size), not no_flip, as_json, say,
                                 precision))
    from ..artifact import is_artifact
    from ..runtime.inputs import list_images, load_boxes
    from ..runtime.outputs import run_predictions
    from ..runtime.predictor import Predictor
    from ..workflows import check_device

    if (input is None) == (camera is None):
        raise ConfigError("pass exactly one of --input (image, folder, video or URL) and --camera INDEX")
    streaming = camera is not None or is_video(input)
    if streaming and boxes is not None:
        raise ConfigError("--boxes names images of a folder; for a video or camera use --detector")
    inputs = [] if streaming else list_images(Path(input))
    box_map = None if streaming else load_boxes(boxes, [p.name for p in inputs])
    check_device(device)
    if not is_artifact(checkpoint):
        require("torch", "predict with a checkpoint (it runs in PyTorch; an exported artifact runs without it)")
    pred = Predictor(checkpoint, backend=str(backend), device=device, input_size=parse_size(input_size),
                     flip_test=not no_flip, detector=detector_option(detector), precision=precision)
    if not as_json:
        say(f"{pred.task} model on {pred.backend} ({pred.backend_reason}): {pred.runner.describe()}")
    if streaming:
        from .stream_predict import predict_stream

        predict_stream(pred, camera if camera is not None else input, output, detect_every, smooth, as_json, say, _json)
        return
    failed: list[tuple[Path, Exception]] = []

    def on_error(path: Path, e: Exception) -> None:
        failed.append((path, e))
        if not as_json:
            say(f"skipped {path.name}: {error_line(e).removeprefix('error: ')}")
    start = time.perf_counter()
    results = run_predictions(pred, inputs, output, box_map, progress=_progress_bar("predict"),
                              on_error=on_error if skip_errors else None)
    seconds = time.perf_counter() - start
    if as_json:
        _json({"task": pred.task, "backend": pred.backend, "output": str(output), "seconds": seconds,
               "ok": len(results), "failed": [{"image": str(p), "error": error_line(e)} for p, e in failed]})
    else:
        say(f"{len(results)} image(s) ok, {len(failed)} failed; results in {output} ({seconds:.1f} s)")
        for p, e in failed:
            say(f"  failed: {p}: {error_line(e).removeprefix('error: ')}")
    if failed and not results:
        raise typer.Exit(code=1)


# --- quantize ---------------------------------------------------------------------------------------
@app.command(name="quantize")
def quantize_cmd(checkpoint: str = typer.Argument(..., help="float checkpoint (.safetensors, directory or HF id)"),
                 scheme: Scheme = typer.Option("int8", help="quantization scheme"),
                 calib: Path = typer.Option(..., "--calib", help="folder of calibration images of the task's domain"),
                 output: Path = typer.Option(..., "--output", "-o", help="output .safetensors file or folder"),
                 budget: Optional[str] = typer.Option(None, help="mixed: e.g. 'seg_agreement>=0.995' or 'size<=0.3'"),
                 report: Optional[Path] = typer.Option(None, "--report", help="also write the report JSON here"),
                 holdout: Optional[Path] = typer.Option(None, help="held-out images for the fidelity report"),
                 calib_size: int = typer.Option(32, min=1, help="calibration images to use"),
                 eval_samples: int = typer.Option(16, min=1, help="held-out images to evaluate at most"),
                 eval_min_samples: int = typer.Option(4, min=1, help=EVAL_MIN_HELP),
                 activation_mode: Activations = typer.Option("dynamic", help="int8/fp8 activations"),
                 calibration_precision: CalibPrecision = typer.Option("auto", help=CALIB_PRECISION_HELP),
                 attention: AttentionInputs = typer.Option("float", help=ATTENTION_HELP),
                 head: HeadPrecision = typer.Option("float", help=HEAD_HELP),
                 group_size: int = typer.Option(DEFAULT_GROUP_SIZE, help="int4-weight: inputs per weight scale "
                                                "(16, 32, 64, 128 or 256)"),
                 input_size: Optional[str] = typer.Option(None, help="network input HxW (default: the model's)"),
                 calib_input_size: Optional[str] = typer.Option(None, help=CALIB_INPUT_HELP)) -> None:
    """Quantize a checkpoint, report its task fidelity against the float model, save it."""
    require("torch", "quantize")
    from .. import load_model
    from ..runtime.inputs import split_images
    from ..workflows import quantize_and_save

    scheme, calib_shape = str(scheme), parse_size(calib_input_size, "--calib-input-size")
    calib_images, eval_images, eval_source = split_images(calib, holdout, calib_size, eval_samples)
    model = load_model(checkpoint)
    options = {} if scheme == "mixed" and budget is not None else {"activation_mode": str(activation_mode)}
    if scheme == "int4-weight":
        options = {"group_size": group_size}
    if scheme not in WEIGHT_ONLY:
        options["calibration_precision"] = str(calibration_precision)
    options.update(opt_in_parts(attention, head), calibration_input_size=calib_shape)
    options["inplace"] = True  # the loaded float model is not used again: no second copy of its weights
    if budget is not None:
        options["budget"] = budget
    path = output if output.suffix == ".safetensors" else output / f"{Path(str(checkpoint)).stem}_{scheme}.safetensors"
    talk = _talk()
    talk.say(f"{model.arch.name} {model.task}: {scheme} with {len(calib_images)} calibration images")
    _, rep = quantize_and_save(model, scheme, calib_images, path, held_out=eval_images, held_out_source=eval_source,
                               input_size=parse_size(input_size), calibration_size=calib_size,
                               eval_samples=eval_samples, eval_min_samples=eval_min_samples, report_path=report,
                               progress=talk.iterate, **options)
    console.print(report_table(rep))
    say(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB)" + (f" and {report}" if report else ""))


# --- export / verify --------------------------------------------------------------------------------
@app.command(name="export")
def export_cmd(checkpoint: str = typer.Argument(..., help="task checkpoint (.safetensors, directory or HF id)"),
               format: Format = typer.Option("onnx", "--format", "-f", help="artifact format"),
               output: Path = typer.Option(..., "--output", "-o", help="artifact directory to create"),
               scheme: Optional[ExportScheme] = typer.Option(
                   None, help="fp32, bf16 (openvino, native, torch) or fp16 (float), or a scheme to quantize with on the fly; "
                   "default: the format's float precision, or the scheme of a quantized checkpoint"),
               calib: Optional[Path] = typer.Option(None, "--calib", help="calibration images (int8/fp8 schemes)"),
               activations: Activations = typer.Option("static", help="int8/fp8 activations: static (int8 kernels in "
                                                       "ONNX Runtime and OpenVINO) or dynamic (per token)"),
               calib_size: int = typer.Option(32, min=1, help="calibration images to use"),
               group_size: int = typer.Option(DEFAULT_GROUP_SIZE, help="int4-weight: inputs per weight scale"),
               calibration_precision: CalibPrecision = typer.Option("auto", help=CALIB_PRECISION_HELP),
               attention: AttentionInputs = typer.Option("float", help=ATTENTION_HELP),
               head: HeadPrecision = typer.Option("float", help=HEAD_HELP),
               input_size: Optional[str] = typer.Option(None, help="network input HxW (default: the model's)"),
               calib_input_size: Optional[str] = typer.Option(None, help=CALIB_INPUT_HELP),
               max_batch: int = typer.Option(8, min=1, help="largest batch the artifact accepts"),
               opset: Optional[int] = typer.Option(None, help="ONNX opset (onnx, openvino): 18 (default, portable) or 23"),
               graph: Optional[OnnxGraph] = typer.Option(None, "--graph", help=GRAPH_HELP),
               detector: Optional[Path] = typer.Option(None, "--detector", help="pose: an exported person "
                                                       "detector artifact to carry inside the pose artifact"),
               overwrite: bool = typer.Option(False, help="replace an existing artifact")) -> None:
    """Export a checkpoint to an artifact directory, verified against the torch model (quantizing
    it first with --scheme int8-weight/int4-weight/int8/fp8). The person detector (convert's RTMDet-m
    .safetensors) exports the same way."""
    fmt, scheme = str(format), (str(scheme) if scheme is not None else None)
    options = given_options(opset=opset, graph=graph)
    check_export_flags(scheme, fmt, calib, str(activations), str(attention), str(head), options)
    calib_shape = parse_size(calib_input_size, "--calib-input-size")
    calibrates = scheme in QUANT_SCHEMES and calib is not None and (scheme not in WEIGHT_ONLY or "int8" in (
        str(attention), str(head)))
    if calib_shape is not None and not calibrates:
        raise ConfigError("--calib-input-size sets the input of the calibration forwards, and this export runs none "
                          "(they need --calib DIR and a scheme with int8 activations, --attention int8 or --head int8)")
    from .. import export, load_model
    from ..runtime.inputs import split_images

    start, size, talk = time.perf_counter(), parse_size(input_size), _talk()
    from ..detection.export import as_graph
    from ..exporters import detector_checkpoint

    model = as_graph(detector_checkpoint(checkpoint))
    model = load_model(model) if isinstance(model, str) else model
    kwargs = given_options(precision=None if scheme in QUANT_SCHEMES else scheme, detector=detector)
    if scheme in QUANT_SCHEMES:
        calib_images, held_out = None, None
        if calibrates:
            calib_images, held_out, _ = split_images(calib, None, calib_size, 8)
            talk.say(f"{model.arch.name} {model.task}: {scheme} ({activations} activations) with "
                     f"{len(calib_images)} calibration images")
        quantize_options: dict = {"input_size": tuple(size or model.input_size), "progress": talk.iterate,
                                  "calibration_input_size": calib_shape, **opt_in_parts(attention, head)}
        if calib_images is not None:
            quantize_options["calibration_size"] = calib_size
        if scheme == "int4-weight":
            quantize_options["group_size"] = group_size
        if scheme not in WEIGHT_ONLY:
            quantize_options["activation_mode"] = str(activations)
            quantize_options["calibration_precision"] = str(calibration_precision)
        kwargs.update(scheme=scheme, calibration=calib_images, quantize_options=quantize_options,  # detector kept
                      **({"fidelity_data": held_out} if held_out else {}))
    talk.say(f"exporting {model.arch.name} {model.task} to {fmt}, then verifying it against the torch model")
    with talk.bar(f"export {fmt} + verify", 1, "step") as advance:
        root = export(model, output, format=fmt, input_size=size, max_batch=max_batch, overwrite=overwrite,
                      **options, **kwargs)
        advance()
    from ..artifact import read_manifest
    from ..workflows import artifact_label

    m = read_manifest(root)
    size_mb = sum(f["size"] for f in m.files.values()) / 1e6
    say(f"exported {m.task} {m.arch.get('name')} to {root} ({artifact_label(m)}, {m.input_size[0]}x{m.input_size[1]}, "
        f"batch <= {m.max_batch}, {size_mb:.1f} MB) in {time.perf_counter() - start:.1f} s; its outputs vs "
        f"{m.fidelity.get('reference', 'the torch model')} on the same input: rel L2 "
        f"{m.fidelity.get('rel_l2', float('nan')):.2e}")
    vs_float = m.fidelity.get("vs_float")
    if vs_float:
        art, ref = vs_float["artifact"], vs_float["torch_quantized"]
        keys = [k for k in ("seg_agreement", "pose_mean_px", "normal_mean_deg", "sqnr_db", "rel_l2") if k in art]
        say("fidelity vs the torch fp32 model (" + vs_float["inputs"] + "): " + ", ".join(
            f"{k} {art[k]:.4g} (torch quantized {ref[k]:.4g})" for k in keys))


@app.command()
def verify(artifact: Path = typer.Argument(..., help="artifact directory"),
           backend: Backend = typer.Option("auto", help="runtime to verify with"),
           as_json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """Re-check an artifact's checksums and its numerics against the stored reference outputs."""
    from ..runtime import verify_artifact

    result = verify_artifact(artifact, str(backend))
    if as_json:
        _json(result)
    else:
        table = Table(title=f"verify {artifact}")
        for col in ("output", "rel L2 vs stored torch outputs", "max abs"):
            table.add_column(col)
        for name, r in result["outputs"].items():
            table.add_row(name, f"{r['rel_l2']:.3e}", f"{r['max_abs']:.3e}")
        say("checksums: ok")
        console.print(table)
        say(f"numerics on {result['backend']}: {'passed' if result['passed'] else 'FAILED'} "
            f"(tolerance {result['tolerance']:g})")
    if not result["passed"]:
        raise typer.Exit(code=1)


@app.command()
def bench(artifacts: list[Path] = typer.Argument(..., help="artifact directories"),
          backend: list[Backend] = typer.Option(["auto"], help="runtime(s) per artifact; repeat the option"),
          runs: int = typer.Option(5, help="timed runs per row (at least 1)"),
          warmup: int = typer.Option(1, help="untimed runs first"),
          batch: int = typer.Option(1, help="batch size"),
          output_dir: Path = typer.Option(Path("bench_results"), help="where bench.md/.csv/.json go"),
          no_baseline: bool = typer.Option(False, "--no-baseline", help="skip the torch fp32 eager row"),
          people: bool = typer.Option(False, "--people", help="pose: latency per person count (1, 2, 4, 8: "
                                      "detector + crops in one batch + decoding) and decoding 308 vs --keypoints"),
          detector: Optional[str] = typer.Option(None, "--detector", help="--people: person detector (as predict's)"),
          keypoints: str = typer.Option("coco17", help="--people: decoding subset, coco17 or comma-separated names"),
          as_json: bool = typer.Option(False, "--json", help="print the rows as JSON")) -> None:
    """Time artifacts side by side with the torch fp32 eager baseline (each row in its own process);
    --people: the pose latency per person count."""
    from .. import bench as benchmod
    from ..runtime.opener import installed

    benchmod.check_counts(warmup, runs, batch)
    if people:
        text = benchmod.run_people(artifacts, str(backend[0]), detector_option(detector), keypoints, warmup, runs,
                                   output_dir, as_json)
        _json(text) if as_json else console.print(text, markup=False, highlight=False)
        return
    backends = [str(b) for b in backend]
    baseline = not no_baseline
    if baseline and not installed("torch"):
        baseline = False
        _echo_error("note: torch is not installed, so there is no torch fp32 eager baseline row "
                   '(pip install "sapiens2-edge[torch]" to add it)')
    command = (f"sapiens2-edge bench {' '.join(map(str, artifacts))} " + " ".join(f"--backend {b}" for b in backends)
               + f" --runs {runs} --warmup {warmup} --batch {batch}" + ("" if baseline else " --no-baseline"))
    rows = benchmod.run(list(artifacts), backends, warmup, runs, batch, baseline=baseline,
                        talk=None if as_json else _talk())
    files = benchmod.write_reports(rows, output_dir, command)
    if as_json:
        _json({"command": command, "rows": rows, "files": [str(f) for f in files]})
        return
    console.print(benchmod.bench_table(rows))
    for line in benchmod.bench_legend(rows):
        say(line)
    say("wrote " + ", ".join(str(f) for f in files))


# --- demo (the README's main job) ---------------------------------------------------------------------
@app.command()
def demo(checkpoint: Optional[str] = typer.Option(None, help="a task checkpoint; default: look for the official one"),
         task: Task = typer.Option("seg", help="task of the model"),
         size: DemoSize = typer.Option("auto", help="auto: the official 0.4b if present, else a random 0.1b at "
                                                    "512x384"),
         image: Optional[Path] = typer.Option(None, help="input image (default: the bundled sample photo)"),
         output: Path = typer.Option(Path("sapiens2_demo"), help="output folder"),
         scheme: DemoScheme = typer.Option("auto", help="quantization; auto: the fastest for this CPU and format "
                                           "(int8 on ONNX Runtime or with VNNI/AMX, else fp32); int8-weight and "
                                           "fp16 need no calibration"),
         format: DemoFormat = typer.Option("auto", "--format", help="artifact (auto: openvino where the CPU has "
                                           "int8 dot products, else onnx)"),
         input_size: Optional[str] = typer.Option(None, help="network input HxW (default: the model's)"),
         runs: int = typer.Option(3, help="timed runs per bench row (at least 1)"),
         no_bench: bool = typer.Option(False, "--no-bench", help="stop after predict")) -> None:
    """The whole chain on a sample image, offline: load -> quantize -> export -> predict -> bench.

    Uses real weights when you have them (--checkpoint, $SAPIENS_CHECKPOINT_ROOT or the Hugging Face
    cache); otherwise a randomly initialised model in the official layout, announced as such.
    """
    from ..bench import bench_legend, bench_table
    from ..demo import run_chain, summary_lines

    res = run_chain(task=str(task), size=str(size), checkpoint=checkpoint, image=image, output=output,
                    scheme=str(scheme), format=str(format), input_size=parse_size(input_size), bench_runs=runs,
                    bench=not no_bench, talk=_talk())
    if res.bench_rows:
        console.print(bench_table(res.bench_rows))
        for line in bench_legend(res.bench_rows, width=min(console.width, 100)):
            say(line)
    for line in summary_lines(res, output, width=min(console.width, 100)):
        say(line)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    app()


if __name__ == "__main__":
    main()
