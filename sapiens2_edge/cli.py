"""``sapiens2-edge`` command line: info, predict, demo."""

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

from .errors import ConfigError, InvalidBoxError, Sapiens2EdgeError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Edge inference for Meta's Sapiens2 models: inspect checkpoints and run predictions.")
console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SAMPLE_IMAGE = Path(__file__).parent / "assets" / "astronaut.jpg"


def _fail(e: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {type(e).__name__}: {e}")
    raise typer.Exit(code=2)


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
    from .models.arch import backbone_shapes, count_params, head_shapes
    from .models.checkpoint import header_summary, resolve_checkpoint
    from .models.layout import describe_checkpoint

    try:
        path = resolve_checkpoint(checkpoint)
        header, layout, arch, head, _, _ = describe_checkpoint(path)
        summary = header_summary(header)
    except Sapiens2EdgeError as e:
        _fail(e)
    backbone_params = count_params(backbone_shapes(arch))
    head_params = count_params(head_shapes(head, arch.input_multiple)) if head else 0
    gqa = [i for i, kv in enumerate(arch.kv_heads) if kv < arch.num_heads]
    data = {
        "path": str(path), "layout": layout, "task": head.task if head else None, "arch": arch.name,
        "embed_dim": arch.embed_dim, "depth": arch.depth, "heads": arch.num_heads, "head_dim": arch.head_dim,
        "gqa_blocks": f"{gqa[0]}..{gqa[-1]} ({arch.kv_heads[gqa[0]]} kv heads)" if gqa else "none",
        "tokenizer_4k": arch.tokenizer_depth, "ffn_hidden": arch.ffn_hidden,
        "input_size": list(head.input_size) if head and head.input_size else None,
        "parameters": summary["num_parameters"], "backbone_parameters": backbone_params,
        "head_parameters": head_params, "tensors": summary["num_tensors"], "dtypes": summary["dtypes"],
        "file_size": summary["file_size"],
    }
    if as_json:
        console.print_json(json.dumps(data))
        return
    table = Table(title=f"{path.name}", show_header=False)
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


# --- predict ----------------------------------------------------------------------------------------
def _list_inputs(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        return files
    if not path.exists():
        raise ConfigError(f"input {path} does not exist; expected an image file or a folder of images")
    return [path]


def _load_boxes(path: Optional[Path], names: list[str]) -> dict[str, object]:
    """boxes.json: {"image.jpg": [[x1, y1, x2, y2], ...], ...}, or a plain list for a single image."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidBoxError(f"cannot read boxes file {path}: {e}") from None
    if isinstance(data, list):
        if len(names) != 1:
            raise InvalidBoxError(f"{path} holds a plain list of boxes, but there are {len(names)} images; "
                                  'use {"image name": [[x1, y1, x2, y2], ...]}')
        return {names[0]: data}
    if not isinstance(data, dict):
        raise InvalidBoxError(f"{path} must hold a JSON object mapping image names to box lists")
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InvalidBoxError(f"{path} has boxes for images that are not inputs: {unknown[:5]}")
    return data


def write_outputs(result, image, out_dir: Path, stem: str) -> list[Path]:
    """Overlay PNG, raw arrays (.npy) and the JSON summary of one result."""
    import cv2
    import numpy as np

    written = []
    overlay = out_dir / f"{stem}.png"
    cv2.imwrite(str(overlay), cv2.cvtColor(result.draw(image), cv2.COLOR_RGB2BGR))
    written.append(overlay)
    for key, arr in result.arrays().items():
        p = out_dir / f"{stem}_{key}.npy"
        np.save(p, arr)
        written.append(p)
    p = out_dir / f"{stem}.json"
    p.write_text(result.to_json())
    written.append(p)
    return written


def run_predictions(predictor, inputs: list[Path], out_dir: Path, boxes: dict, show_progress: bool = True) -> list:
    from tqdm import tqdm

    from .tasks import load_image, pose_demo_json

    out_dir.mkdir(parents=True, exist_ok=True)
    results, names = [], []
    for path in tqdm(inputs, desc="predict", unit="img", disable=not (show_progress and sys.stderr.isatty())):
        image = load_image(path)
        result = predictor(image, boxes=boxes.get(path.name))
        write_outputs(result, image, out_dir, path.stem)
        results.append(result)
        names.append(path.name)
    if predictor.task == "pose":
        (out_dir / "keypoints.json").write_text(json.dumps(pose_demo_json(results, names), indent=1))
    return results


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
    from .runtime.predictor import Predictor

    try:
        inputs = _list_inputs(input)
        box_map = _load_boxes(boxes, [p.name for p in inputs])
        pred = Predictor(checkpoint, backend=backend, device=device, input_size=_parse_size(input_size),
                         flip_test=not no_flip)
        if box_map and pred.task != "pose":
            raise InvalidBoxError(f"--boxes is only used by pose models; this is a {pred.task} model")
        console.print(f"{pred.task} model, backend {pred.runner.describe()} ({pred.backend_reason})")
        start = time.perf_counter()
        run_predictions(pred, inputs, output, box_map)
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


def _split_images(calib: Path, holdout: Optional[Path], calib_size: int, eval_samples: int):
    """Calibration images, held-out images and a word on where the held-out set came from."""
    images = _list_inputs(calib)
    if holdout is not None:
        return images[:calib_size], _list_inputs(holdout)[:eval_samples], f"{holdout}"
    rest = images[calib_size:calib_size + eval_samples]
    if rest:
        return images[:calib_size], rest, f"{len(rest)} images of {calib} not used for calibration"
    return images[:calib_size], images[:eval_samples], "the calibration images (no held-out images were left)"


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
    from .models.loading import load_model
    from .quantization import quantize, save_quantized
    from .quantization.evaluate import evaluate

    try:
        model = load_model(checkpoint)
        size = _parse_size(input_size) or model.input_size
        calib_images, eval_images, eval_source = _split_images(calib, holdout, calib_size, eval_samples)
        options = {"input_size": tuple(size), "calibration_size": calib_size}
        if scheme != "mixed" or budget is None:
            options["activation_mode"] = activation_mode
        if budget is not None:
            options["budget"] = budget
        console.print(f"{model.arch.name} {model.task}: {scheme} with {len(calib_images)} calibration images")
        qmodel, rep = quantize(model, scheme, calibration=calib_images, **options)
        if not rep.fidelity:
            rep.fidelity = evaluate(model, qmodel, eval_images, input_size=size, samples=eval_samples)
        rep.fidelity["evaluated_on"] = eval_source
        path = output if output.suffix == ".safetensors" else output / f"{Path(str(checkpoint)).stem}_{scheme}.safetensors"
        save_quantized(qmodel, path, report=rep)
        if report is not None:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(rep.to_json())
    except Sapiens2EdgeError as e:
        _fail(e)
    console.print(report_table(rep))
    console.print(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB)" + (f" and {report}" if report else ""))


# --- export / verify --------------------------------------------------------------------------------
QUANT_SCHEMES = ("int8-weight", "int8", "fp8")


def quantize_for_export(model, scheme: str, calib: Optional[Path], size, activations: str, calib_size: int):
    """Quantize ``model`` on the fly for ``export --scheme``: (QuantizedModel, report, held-out images).

    int8-weight needs no data; int8/fp8 need --calib (SmoothQuant statistics, static ranges, and
    the fidelity check against the float model on images left out of calibration)."""
    from .quantization import quantize

    if scheme not in QUANT_SCHEMES:
        raise ConfigError(f"unknown --scheme {scheme!r}; expected fp32, fp16 or one of {', '.join(QUANT_SCHEMES)}")
    if activations not in ("static", "dynamic"):
        raise ConfigError(f"--activations must be 'static' or 'dynamic', got {activations!r}")
    if calib is None:
        if scheme != "int8-weight":
            raise ConfigError(f"--scheme {scheme} quantizes activations and needs calibration images: pass --calib DIR "
                              "(a folder of images of the task's domain; 32 are used), or use --scheme int8-weight, "
                              "which needs none")
        qmodel, rep = quantize(model, scheme, input_size=tuple(size), progress=False)
        return qmodel, rep, None
    calib_images, held_out, _ = _split_images(calib, None, calib_size, 8)
    options = {"activation_mode": activations} if scheme != "int8-weight" else {}
    console.print(f"{model.arch.name} {model.task}: {scheme} ({options.get('activation_mode', 'weight-only')}) with "
                  f"{len(calib_images)} calibration images")
    qmodel, rep = quantize(model, scheme, calibration=calib_images, input_size=tuple(size),
                           calibration_size=calib_size, **options)
    return qmodel, rep, held_out


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
    from .exporters import export
    from .models.loading import load_model

    try:
        start = time.perf_counter()
        model = load_model(checkpoint)
        size = _parse_size(input_size)
        extra: dict = {}
        precision = scheme
        if scheme in QUANT_SCHEMES or (scheme not in (None, "fp32", "fp16") and not hasattr(model, "recipe")):
            if hasattr(model, "recipe"):
                raise ConfigError(f"{checkpoint} is already quantized ({model.scheme}); export it without --scheme")
            qmodel, rep, held_out = quantize_for_export(model, scheme, calib, size or model.input_size, activations,
                                                        calib_size)
            extra = {"float_model": model, "report": rep, "fidelity_data": held_out}
            model, precision = qmodel, None
        root = export(model, output, format=format, precision=precision, input_size=size, max_batch=max_batch,
                      overwrite=overwrite, **({"opset": opset} if opset is not None else {}), **extra)
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
    console.print(bench_table(rows))
    files = benchmod.write_reports(rows, output_dir, command)
    console.print("wrote " + ", ".join(str(f) for f in files))


def bench_table(rows: list[dict]) -> Table:
    table = Table(title="sapiens2-edge bench")
    for col in ("artifact", "backend", "load s", "median s", "p90 s", "img/s", "peak RSS MB", "size MB", "rel L2",
                "speed-up"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["artifact"], r["backend"], f"{r['load_s']:.2f}", f"{r['median_s']:.3f}", f"{r['p90_s']:.3f}",
                      f"{r['throughput_img_s']:.2f}", f"{r['peak_rss_mb']:.0f}", f"{r['size_mb']:.1f}",
                      "-" if r["fidelity_rel_l2"] is None else f"{r['fidelity_rel_l2']:.1e}",
                      "-" if r["speedup"] is None else f"{r['speedup']:.2f}x")
    return table


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
