"""int4-weight on a full-size preset (random weights): checkpoint size per group size and float
storage, then the exported artifacts that carry int4 (size, latency here, check against torch).

    python benchmarks/int4_mobile.py --arch 0.4b --task seg --input-size 1024x768
    python benchmarks/int4_mobile.py --arch 0.1b --task seg --input-size 512x384

Prints markdown and appends it to benchmarks/results/mobile.md (section "int4-weight"). Random
weights say nothing about task fidelity (that is measured on the trained fixture, see
``--fixture``); the check against torch is the exported file against the torch QuantizedModel.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

import sapiens2_edge as s2e
from sapiens2_edge.artifact import read_manifest
from sapiens2_edge.models.random_init import random_model
from sapiens2_edge.quantization import Int4Weight, quantize, save_quantized

RESULTS = Path(__file__).parent / "results"


def mb(n: int) -> str:
    return f"{n / 1e6:.1f}"


def artifact_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name not in ("reference.npz",
                                                                                          "manifest.json"))


def fixture_rows() -> list[str]:
    """Task fidelity vs float of the trained tiny fixtures on 16 fresh synthetic images."""
    from sapiens2_edge.quantization.evaluate import evaluate
    from tests.fixtures.synthetic import make_people

    images = list(make_people(16, 20_000, (128, 96))[0])
    rows = ["| fixture | config | weight SQNR (dB, mean) | output SQNR (dB) | seg agreement / pose PCK@2px |",
            "|---|---|---|---|---|"]
    for task in ("seg", "pose"):
        model = s2e.load_model(Path(__file__).parents[1] / "tests/fixtures/data" / f"trained_tiny_{task}.safetensors")
        for cfg in (Int4Weight(32, "mse"), Int4Weight(32, "absmax"), Int4Weight(64, "mse"), Int4Weight(64, "absmax"),
                    "int8-weight"):
            for storage in ("fp32", "fp16") if cfg == Int4Weight(32, "mse") else ("fp32",):
                q, rep = quantize(model, cfg, float_storage=storage, progress=False)
                r = evaluate(model, q, images, input_size=(128, 96))
                sq = sum(lr.weight_sqnr_db for lr in rep.layers) / len(rep.layers)
                metric = r["seg_agreement"] if task == "seg" else r["pose_pck_2px"]
                name = cfg if isinstance(cfg, str) else f"Int4Weight({cfg.group_size}, {cfg.scale_method!r})"
                rows.append(f"| {task} | {name}{', float_storage=fp16' if storage == 'fp16' else ''} | {sq:.2f} | "
                            f"{r['sqnr_db']:.2f} | {metric:.4f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="0.4b")
    ap.add_argument("--task", default="seg")
    ap.add_argument("--input-size", default="1024x768")
    ap.add_argument("--group-sizes", default="32,64")
    ap.add_argument("--formats", default="onnx,openvino")
    ap.add_argument("--export-group-size", type=int, default=32)
    ap.add_argument("--export-float-storage", default="fp16")
    ap.add_argument("--size-scale-method", default="mse", help="scale method of the size rows (the size does not "
                    "depend on it; absmax is ~20x faster)")
    ap.add_argument("--runs", type=int, default=2, help="timed runs per artifact (batch 1)")
    ap.add_argument("--fixture", action="store_true", help="also the trained-fixture fidelity table")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.input_size.split("x"))
    torch.manual_seed(0)
    model = random_model(args.arch, args.task, input_size=size)
    fp32_bytes = sum(t.numel() * t.element_size() for t in model.official_state_dict().values())
    lines = [f"\n### {date.today().isoformat()}: {args.arch} {args.task} {args.input_size}, random weights\n",
             f"`python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`\n",
             f"fp32 tensors: {mb(fp32_bytes)} MB.\n",
             "| checkpoint | file (MB) | vs fp32 | weight SQNR (dB, mean over layers) | quantize (s) |",
             "|---|---|---|---|---|"]
    tmp = Path(tempfile.mkdtemp(prefix="int4_"))
    try:
        for g in (int(v) for v in args.group_sizes.split(",")):
            for storage in ("fp32", "fp16"):
                t0 = time.perf_counter()
                q, rep = quantize(model, Int4Weight(g, args.size_scale_method), float_storage=storage, progress=False)
                secs = time.perf_counter() - t0
                path = save_quantized(q, tmp / f"g{g}_{storage}.safetensors", rep)
                n = path.stat().st_size
                sq = sum(lr.weight_sqnr_db for lr in rep.layers) / len(rep.layers)
                lines.append(f"| int4-weight G={g} {args.size_scale_method}, float_storage={storage} | {mb(n)} | {n / fp32_bytes:.3f}x | "
                             f"{sq:.2f} | {secs:.0f} |")
                print(lines[-1], flush=True)
                path.unlink()
                del q
        q, _ = quantize(model, Int4Weight(args.export_group_size), float_storage=args.export_float_storage,
                        progress=False)
        lines += ["", f"Artifacts of int4-weight G={args.export_group_size}, float_storage={args.export_float_storage}, "
                  "max_batch 1 (latency: median of the timed runs, batch 1, this loaded 2-core CPU):\n",
                  "| format | files (MB) | rel L2 vs torch QuantizedModel | latency (s) | int4 in the file |",
                  "|---|---|---|---|---|"]
        from sapiens2_edge.bench import measure_row

        for fmt in [f for f in args.formats.split(",") if f]:
            out = tmp / fmt
            s2e.export(q, out, format=fmt, input_size=size, max_batch=1)
            m = read_manifest(out, verify=False)
            backend = {"onnx": "onnxruntime", "openvino": "openvino", "torch": "torch"}.get(fmt)
            lat = "-"
            if backend and args.runs > 0:
                lat = f"{measure_row(str(out), backend, 1, args.runs, 1)['median_s']:.2f}"
            how = (m.quantization or {}).get("export", {})
            kinds = how.get("runtime_precisions") or how.get("weight_dtypes") or how.get("layers")
            rel = m.fidelity.get("rel_l2")
            lines.append(f"| {fmt} | {mb(artifact_bytes(out))} | {'-' if rel is None else f'{rel:.2e}'} | {lat} | "
                         f"{kinds} |")
            print(lines[-1], flush=True)
            shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.fixture:
        lines += ["", "Task fidelity vs float, trained tiny fixtures (16 fresh synthetic images, 128x96):\n",
                  *fixture_rows()]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "mobile.md").open("a") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
