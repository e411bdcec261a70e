"""``sapiens2-edge`` command line: info, convert, predict, quantize, export, verify, bench, demo.

Parsing and printing only: every command calls the library (``workflows``, ``runtime``,
``exporters``, ``bench``, ``demo``) and prints what it returns.
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

from .errors import ConfigError, Sapiens2EdgeError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Edge inference for Meta's Sapiens2 models: inspect, quantize, export, predict, bench.")
console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


def _fail(e: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {type(e).__name__}: {e}")
    raise typer.Exit(code=2)


def _progress_bar(desc: str):
    """A tqdm bar over a list when stderr is a terminal."""
    from tqdm import tqdm

    return lambda items: tqdm(items, desc=desc, unit="img", disable=not sys.stderr.isatty())


def _parse_size(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise ConfigError(f"--input-size must look like 1024x768 (H x W), got {text!r}") from None
    return h, w


# --- info -------------------------------------------------------------------------------------------
@app.command()
def info(checkpoint: str = typer.Argument(..., help=".safetensors file, directory or Hugging Face id"),
         as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """Describe a checkpoint from its safetensors header alone (no weights are read)."""
    from .workflows import checkpoint_info

    try:
        data = checkpoint_info(checkpoint)
    except Sapiens2EdgeError as e:
        _fail(e)
    if as_json:
        console.print_json(json.dumps(data))
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
                arch: str = typer.Option("0.1b", help="0.1b, 0.4b, 0.8b, 1b, 5b or 1b-4k"),
                task: str = typer.Option("seg", help="pose, seg, normal, pointmap, albedo, or none (pretrain backbone)"),
                input_size: Optional[str] = typer.Option(None, help="HxW the pointmap head is built for and the "
                                                                    "model's default input (default 1024x768)"),
                seed: int = typer.Option(0, help="random seed (the same seed writes the same weights)"),
                dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16"),
                overwrite: bool = typer.Option(False, help="replace an existing file")) -> None:
    """Write a randomly initialised checkpoint in the official layout, to try every command without
    weights (its metadata marks it as random; overlays say RANDOM WEIGHTS)."""
    from .models.random_init import write_random_checkpoint

    try:
        start = time.perf_counter()
        path = write_random_checkpoint(output, arch, task, input_size=_parse_size(input_size), seed=seed,
                                       dtype=dtype, overwrite=overwrite)
    except Sapiens2EdgeError as e:
        _fail(e)
    console.print(f"wrote RANDOM WEIGHTS {arch} {task} checkpoint {path} ({path.stat().st_size / 1e6:.1f} MB, "
                  f"seed {seed}, {dtype}) in {time.perf_counter() - start:.1f} s; predictions from it are noise")


# --- convert ----------------------------------------------------------------------------------------
@app.command()
def convert(source: Path = typer.Argument(..., help="the official detector checkpoint, e.g. detector/rtmdet_m.pth"),
            output: Path = typer.Argument(..., help="the .safetensors file to write"),
            overwrite: bool = typer.Option(False, help="replace an existing file")) -> None:
    """Convert the RTMDet-m person detector's .pth to safetensors, once (read with torch's restricted
    unpickler; every other command reads safetensors only)."""
    from .detection.checkpoint import convert_checkpoint

    try:
        path = convert_checkpoint(source, output, overwrite=overwrite)
    except Sapiens2EdgeError as e:
        _fail(e)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): RTMDet-m person detector, load it with "
                  "sapiens2_edge.load_detector")


# --- predict ----------------------------------------------------------------------------------------
@app.command()
def predict(checkpoint: str = typer.Argument(..., help=".safetensors file, directory or Hugging Face id"),
            input: Path = typer.Option(..., "--input", "-i", help="an image or a folder of images"),
            output: Path = typer.Option(..., "--output", "-o", help="folder for overlays and raw results"),
            boxes: Optional[Path] = typer.Option(None, "--boxes", help="pose: JSON {image name: [[x1,y1,x2,y2], ...]}"),
            device: str = typer.Option("auto", help="auto, cpu or cuda[:N]"),
            input_size: Optional[str] = typer.Option(None, help="network input HxW (default: the model's)"),
            no_flip: bool = typer.Option(False, "--no-flip", help="pose: skip the flip test"),
            backend: str = typer.Option("auto", help="auto, torch, onnxruntime, openvino (artifacts)")) -> None:
    """Run a task checkpoint or an exported artifact on an image or a folder; write overlay PNGs,
    .npy arrays and JSON."""
    from .runtime.inputs import list_images, load_boxes
    from .runtime.outputs import run_predictions
    from .runtime.predictor import Predictor

    try:
        inputs = list_images(input)
        box_map = load_boxes(boxes, [p.name for p in inputs])
        pred = Predictor(checkpoint, backend=backend, device=device, input_size=_parse_size(input_size),
                         flip_test=not no_flip)
        console.print(f"{pred.task} model, backend {pred.runner.describe()} ({pred.backend_reason})")
        start = time.perf_counter()
        run_predictions(pred, inputs, output, box_map, progress=_progress_bar("predict"))
    except Sapiens2EdgeError as e:
        _fail(e)
    console.print(f"wrote results for {len(inputs)} image(s) to {output} in {time.perf_counter() - start:.1f} s")


# --- quantize ---------------------------------------------------------------------------------------
def report_table(report) -> Table:
    """The end-of-run table: sizes, whole-model and task fidelity, the weakest layers."""
    table = Table(title=f"quantization: {report.scheme}", show_header=True)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_row("size", f"{report.size_before_bytes / 1e6:.2f} MB -> {report.size_after_bytes / 1e6:.2f} MB "
                          f"({report.size_after_bytes / max(report.size_before_bytes, 1):.3f}x)")
    if report.output_sqnr_db is not None:
        table.add_row("output SQNR (calibration)", f"{report.output_sqnr_db:.1f} dB")
    for k, v in report.fidelity.items():
        if isinstance(v, float):
            table.add_row(f"{k} (held-out)", f"{v:.4f}" if abs(v) < 1e4 else f"{v:.3g}")
        elif k in ("samples", "budget", "evaluated_on"):
            table.add_row(k, str(v))
    worst = sorted((lr for lr in report.layers if lr.output_sqnr_db is not None), key=lambda lr: lr.output_sqnr_db)
    for lr in worst[:5]:
        table.add_row(f"weak layer {lr.name}", f"{lr.scheme}, {lr.output_sqnr_db:.1f} dB")
    for note in report.notes:
        table.add_row("note", note)
    return table


@app.command(name="quantize")
def quantize_cmd(checkpoint: str = typer.Argument(..., help="float checkpoint (.safetensors, directory or HF id)"),
                 scheme: str = typer.Option("int8", help="fp16, int8-weight, int8, fp8 or mixed"),
                 calib: Path = typer.Option(..., "--calib", help="folder of calibration images of the task's domain"),
                 output: Path = typer.Option(..., "--output", "-o", help="output .safetensors file or folder"),
                 budget: Optional[str] = typer.Option(None, help="mixed: e.g. 'seg_agreement>=0.995' or 'size<=0.3'"),
                 report: Optional[Path] = typer.Option(None, "--report", help="also write the report JSON here"),
                 holdout: Optional[Path] = typer.Option(None, help="held-out images for the fidelity report"),
                 calib_size: int = typer.Option(32, help="calibration images to use"),
                 eval_samples: int = typer.Option(16, help="held-out images to evaluate"),
                 activation_mode: str = typer.Option("dynamic", help="int8/fp8 activations: dynamic or static"),
                 input_size: Optional[str] = typer.Option(None, help="network input HxW (default: the model's)")) -> None:
    """Quantize a checkpoint, report its task fidelity against the float model, save it."""
    from . import load_model
    from .runtime.inputs import split_images
    from .workflows import quantize_and_save

    try:
        model = load_model(checkpoint)
        calib_images, eval_images, eval_source = split_images(calib, holdout, calib_size, eval_samples)
        options = {} if scheme == "mixed" and budget is not None else {"activation_mode": activation_mode}
        if budget is not None:
            options["budget"] = budget
        path = output if output.suffix == ".safetensors" else output / f"{Path(str(checkpoint)).stem}_{scheme}.safetensors"
        console.print(f"{model.arch.name} {model.task}: {scheme} with {len(calib_images)} calibration images")
        _, rep = quantize_and_save(model, scheme, calib_images, path, held_out=eval_images, held_out_source=eval_source,
                                   input_size=_parse_size(input_size), calibration_size=calib_size,
                                   eval_samples=eval_samples, report_path=report, **options)
    except Sapiens2EdgeError as e:
        _fail(e)
    console.print(report_table(rep))
    console.print(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB)" + (f" and {report}" if report else ""))


# --- export / verify --------------------------------------------------------------------------------
def _check_export_flags(scheme: Optional[str], calib: Optional[Path], activations: str) -> None:
    from .workflows import FLOAT_SCHEMES, QUANT_SCHEMES

    if scheme is not None and scheme not in FLOAT_SCHEMES + QUANT_SCHEMES:
        raise ConfigError(f"unknown --scheme {scheme!r}; expected fp32, fp16 or one of {', '.join(QUANT_SCHEMES)}")
    if activations not in ("static", "dynamic"):
        raise ConfigError(f"--activations must be 'static' or 'dynamic', got {activations!r}")
    if scheme in QUANT_SCHEMES and scheme != "int8-weight" and calib is None:
        raise ConfigError(f"--scheme {scheme} quantizes activations and needs calibration images: pass --calib DIR "
                          "(a folder of images of the task's domain; 32 are used), or use --scheme int8-weight, "
                          "which needs none")


@app.command(name="export")
def export_cmd(checkpoint: str = typer.Argument(..., help="task checkpoint (.safetensors, directory or HF id)"),
               format: str = typer.Option("onnx", "--format", "-f", help="onnx or openvino"),
               output: Path = typer.Option(..., "--output", "-o", help="artifact directory to create"),
               scheme: Optional[str] = typer.Option(
                   None, help="fp32 or fp16 (float), or int8-weight, int8, fp8 to quantize on the fly; default: fp32, "
                   "or the scheme of a quantized checkpoint"),
               calib: Optional[Path] = typer.Option(None, "--calib", help="calibration images (int8/fp8 schemes)"),
               activations: str = typer.Option("static", help="int8/fp8 activations: static (int8 kernels in ONNX "
                                                "Runtime and OpenVINO) or dynamic (per token)"),
               calib_size: int = typer.Option(32, help="calibration images to use"),
               input_size: Optional[str] = typer.Option(None, help="network input HxW (default: the model's)"),
               max_batch: int = typer.Option(8, help="largest batch the artifact accepts"),
               opset: Optional[int] = typer.Option(None, help="ONNX opset (onnx, openvino): 18 (default, portable) or 23"),
               overwrite: bool = typer.Option(False, help="replace an existing artifact")) -> None:
    """Export a checkpoint to an artifact directory, verified against the torch model (quantizing
    it first with --scheme int8-weight/int8/fp8)."""
    from . import export, load_model
    from .runtime.inputs import split_images
    from .workflows import QUANT_SCHEMES

    try:
        start = time.perf_counter()
        _check_export_flags(scheme, calib, activations)
        size = _parse_size(input_size)
        model = load_model(checkpoint)
        kwargs: dict = {"precision": scheme} if scheme is not None and scheme not in QUANT_SCHEMES else {}
        if scheme in QUANT_SCHEMES:
            calib_images, held_out = None, None
            if calib is not None:
                calib_images, held_out, _ = split_images(calib, None, calib_size, 8)
                mode = activations if scheme != "int8-weight" else "weight-only"
                console.print(f"{model.arch.name} {model.task}: {scheme} ({mode}) with {len(calib_images)} "
                              "calibration images")
            quantize_options: dict = {"input_size": tuple(size or model.input_size)}
            if calib_images is not None:
                quantize_options["calibration_size"] = calib_size
            else:
                quantize_options["progress"] = False
            if scheme != "int8-weight":
                quantize_options["activation_mode"] = activations
            kwargs = {"scheme": scheme, "calibration": calib_images, "quantize_options": quantize_options}
            if held_out:
                kwargs["fidelity_data"] = held_out
        root = export(model, output, format=format, input_size=size, max_batch=max_batch, overwrite=overwrite,
                      **({"opset": opset} if opset is not None else {}), **kwargs)
    except Sapiens2EdgeError as e:
        _fail(e)
    from .artifact import read_manifest

    m = read_manifest(root)
    size_mb = sum(f["size"] for f in m.files.values()) / 1e6
    console.print(f"exported {m.task} {m.arch.get('name')} to {root} ({m.format}, {m.precision}, "
                  f"{m.input_size[0]}x{m.input_size[1]}, batch <= {m.max_batch}) in {time.perf_counter() - start:.1f} s; "
                  f"{size_mb:.1f} MB; verified relative L2 {m.fidelity.get('rel_l2', float('nan')):.2e} against "
                  f"{m.fidelity.get('reference', 'torch')}")
    vs_float = m.fidelity.get("vs_float")
    if vs_float:
        art, ref = vs_float["artifact"], vs_float["torch_quantized"]
        keys = [k for k in ("seg_agreement", "pose_mean_px", "normal_mean_deg", "sqnr_db", "rel_l2") if k in art]
        console.print("fidelity vs float (" + vs_float["inputs"] + "): " + ", ".join(
            f"{k} {art[k]:.4g} (torch {ref[k]:.4g})" for k in keys))


@app.command()
def verify(artifact: Path = typer.Argument(..., help="artifact directory"),
           backend: str = typer.Option("auto", help="runtime to verify with")) -> None:
    """Re-check an artifact's checksums and its numerics against the stored reference outputs."""
    from .exporters import verify_artifact

    try:
        result = verify_artifact(artifact, backend)
    except Sapiens2EdgeError as e:
        _fail(e)
    table = Table(title=f"verify {artifact}")
    for col in ("output", "relative L2", "max abs"):
        table.add_column(col)
    for name, r in result["outputs"].items():
        table.add_row(name, f"{r['rel_l2']:.3e}", f"{r['max_abs']:.3e}")
    console.print("checksums: ok")
    console.print(table)
    verdict = "[green]passed[/]" if result["passed"] else "[red]FAILED[/]"
    console.print(f"numerics on {result['backend']}: {verdict} (tolerance {result['tolerance']:g})")
    if not result["passed"]:
        raise typer.Exit(code=1)


@app.command()
def bench(artifacts: list[Path] = typer.Argument(..., help="artifact directories"),
          backend: list[str] = typer.Option(["auto"], help="runtime(s) per artifact; repeat the option"),
          runs: int = typer.Option(5, help="timed runs per row"),
          warmup: int = typer.Option(1, help="untimed runs first"),
          batch: int = typer.Option(1, help="batch size"),
          output_dir: Path = typer.Option(Path("bench_results"), help="where bench.md/.csv/.json go"),
          no_baseline: bool = typer.Option(False, "--no-baseline", help="skip the torch fp32 eager row")) -> None:
    """Time artifacts side by side with the torch fp32 eager baseline (each row in its own process)."""
    from . import bench as benchmod

    command = (f"sapiens2-edge bench {' '.join(map(str, artifacts))} " + " ".join(f"--backend {b}" for b in backend)
               + f" --runs {runs} --warmup {warmup} --batch {batch}" + (" --no-baseline" if no_baseline else ""))
    try:
        rows = benchmod.run(list(artifacts), backend, warmup, runs, batch, baseline=not no_baseline)
    except Sapiens2EdgeError as e:
        _fail(e)
    console.print(benchmod.bench_table(rows))
    files = benchmod.write_reports(rows, output_dir, command)
    console.print("wrote " + ", ".join(str(f) for f in files))


# --- demo (the README's main job) ---------------------------------------------------------------------
@app.command()
def demo(checkpoint: Optional[str] = typer.Option(None, help="a task checkpoint; default: look for the official one"),
         task: str = typer.Option("seg", help="pose, seg, normal, pointmap or albedo"),
         size: str = typer.Option("auto", help="auto (the official 0.4b if present, else a random 0.1b at 512x384), "
                                               "or 0.1b, 0.4b, 0.8b, 1b, 5b"),
         image: Optional[Path] = typer.Option(None, help="input image (default: the bundled sample photo)"),
         output: Path = typer.Option(Path("sapiens2_demo"), help="output folder"),
         scheme: str = typer.Option("int8", help="quantization: fp16, int8-weight, int8 or fp8"),
         format: str = typer.Option("auto", "--format", help="artifact: auto (openvino if installed, else onnx), "
                                                            "onnx, openvino, coreml, torch, native"),
         input_size: Optional[str] = typer.Option(None, help="network input HxW (default: the model's)"),
         runs: int = typer.Option(3, help="timed runs per bench row"),
         no_bench: bool = typer.Option(False, "--no-bench", help="stop after predict")) -> None:
    """The whole chain on a sample image, offline: load -> quantize -> export -> predict -> bench.

    Uses real weights when you have them (--checkpoint, $SAPIENS_CHECKPOINT_ROOT or the Hugging Face
    cache); otherwise a randomly initialised model in the official layout, announced as such.
    """
    from .bench import bench_table
    from .demo import run_chain

    try:
        res = run_chain(task=task, size=size, checkpoint=checkpoint, image=image, output=output, scheme=scheme,
                        format=format, input_size=_parse_size(input_size), bench_runs=runs, bench=not no_bench,
                        say=console.print)
    except Sapiens2EdgeError as e:
        _fail(e)
    console.print(report_table(res.report))
    console.print(f"summary: {res.results[0].to_json()[:300]}")
    if res.bench_rows:
        console.print(bench_table(res.bench_rows))
        base, art = res.bench_rows[0], res.bench_rows[-1]
        console.print(f"speed-up of {art['artifact']} on {art['backend']} over torch fp32 eager: {art['speedup']:.2f}x "
                      f"({art['median_s']:.3f} s vs {base['median_s']:.3f} s median), peak RSS "
                      f"{art['peak_rss_mb'] / base['peak_rss_mb']:.2f}x")
    console.print(f"outputs in {output}/: " + ", ".join(sorted(p.name for p in output.iterdir())))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    app()


if __name__ == "__main__":
    main()
