"""End-to-end backbone latency with random weights: reference eager bf16, reference +
torch.compile, ours (Triton tokenizer + attention prologue, eager and compiled), and optionally
ours with FP8 linears (``sapiens2_edge.quantization`` scheme ``fp8``, whose GEMMs dispatch to the
Triton FP8 kernels where they are registered).

Models: 0.4b and 1b at 1024x768, 1b-4K at 4096x3072. Each variant reports median latency,
images/s, speed-up over reference eager and over reference + torch.compile, and its max |diff|
against reference eager. Results: benchmarks/results/kernels/end_to_end.{md,json}.

    python benchmarks/kernels/bench_end_to_end.py                          # all models, GPU
    python benchmarks/kernels/bench_end_to_end.py --models 0.4b --fp8
    python benchmarks/kernels/bench_end_to_end.py --dry-run                # CPU, interpreter, tiny
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]  # roofline.py; the repository (when not pip-installed)

MODELS = {"0.4b": ("0.4b", (1024, 768)), "1b": ("1b", (1024, 768)), "1b-4k": ("1b-4k", (4096, 3072))}
VARIANTS = ("ref-eager", "ref-compile", "ours-eager", "ours-compile", "ours-fp8-eager", "ours-fp8-compile")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--variants", default=",".join(VARIANTS[:4]),
                   help=f"comma list of {', '.join(VARIANTS)} (--fp8 adds the two fp8 ones)")
    p.add_argument("--fp8", action="store_true", help="also run ours with FP8 linears (compute capability >= 8.9)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny model: checks the script")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--tag", default="", help="suffix of the result files (end_to_end<tag>.md)")
    args = p.parse_args(argv)
    args.models = args.models.split(",")
    args.variants = args.variants.split(",") + (["ours-fp8-eager", "ours-fp8-compile"] if args.fp8 else [])
    if any(m not in MODELS for m in args.models):
        p.error(f"--models must be among {', '.join(MODELS)}")
    if any(v not in VARIANTS for v in args.variants):
        p.error(f"--variants must be among {', '.join(VARIANTS)}")
    return args


def _build(name: str, dry_run: bool):
    from sapiens2_edge.models.arch import ArchSpec
    from sapiens2_edge.models.model import build_model

    if dry_run:  # two main blocks (one GQA), a 2-block tokenizer for the 4K variant
        arch = ArchSpec(64, 2, 4, (4, 2), 128, tokenizer_depth=2 if name == "1b-4k" else 0, name=f"tiny-{name}")
        return build_model(arch), ((256, 192) if name == "1b-4k" else (64, 48))
    preset, size = MODELS[name]
    return build_model(preset), size


def _fp8(model):
    """FP8 (E4M3, dynamic per-token activations) linears as quantized (fp8 weights, fp32 scales and
    bias); every other float tensor in bf16."""
    import torch

    from sapiens2_edge.quantization import QuantLinear, quantize

    qmodel, _ = quantize(model, "fp8", progress=False)
    for mod in qmodel.modules():
        if isinstance(mod, QuantLinear):
            continue
        for store in (mod._parameters, mod._buffers):
            for key, t in store.items():
                if t is not None and t.dtype == torch.float32:
                    store[key] = torch.nn.Parameter(t.to(torch.bfloat16), requires_grad=False) \
                        if isinstance(t, torch.nn.Parameter) else t.to(torch.bfloat16)
    return qmodel


def run_model(args, name, device, timer):
    import torch

    from sapiens2_edge.kernels import switch

    base_model, size = _build(name, args.dry_run)
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    x = torch.randn(args.batch, 3, *size, device=device, dtype=dtype)
    rows, outs = [], {}
    for variant in args.variants:
        if "compile" in variant and device.type != "cuda":
            continue  # inductor on the CPU dry run would only burn time
        torch._dynamo.reset()
        try:
            mode = "reference" if variant.startswith("ref") else "triton"
            with switch.override(mode=mode):  # quantized layers choose their kernels when built
                model = _fp8(base_model) if "fp8" in variant else base_model
            model = model.to(device=device, dtype=None if "fp8" in variant else dtype).eval()
            fn = torch.compile(model) if "compile" in variant else model
            with torch.inference_mode(), switch.override(mode=mode):
                outs[variant] = fn(x).float()  # traces/compiles with this variant's kernel mode
                ms = timer(lambda fn=fn: fn(x))
        except Exception as e:  # noqa: BLE001 - one failing variant must not hide the others
            rows.append({"variant": variant, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        r = {"variant": variant, "ms": round(ms, 2), "img/s": round(args.batch * 1e3 / ms, 2)}
        if "ref-eager" in outs:
            ref = outs["ref-eager"]
            r["max_abs_diff"] = f"{(outs[variant] - ref).abs().max().item():.3e}"
            r["rel_l2"] = f"{((outs[variant] - ref).norm() / ref.norm()).item():.2e}"
        rows.append(r)
    by = {r["variant"]: r["ms"] for r in rows if "ms" in r}
    for r in rows:
        for base in ("ref-eager", "ref-compile"):
            if "ms" in r and base in by:
                r[f"x vs {base}"] = round(by[base] / r["ms"], 2)
    del base_model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return f"{name} at {size[0]}x{size[1]}, batch {args.batch}", rows


def main(argv=None) -> int:
    args = parse_args(argv)
    from roofline import bench_device, device_info, time_ms, write_results

    device = bench_device(args.dry_run)
    if device is None:
        return 2
    timer = lambda fn: time_ms(fn, device, warmup=3, reps=args.reps)  # noqa: E731
    sections = {}
    for name in args.models:
        title, rows = run_model(args, name, device, timer)
        sections[title] = rows
        print(title, rows, flush=True)
    header = {**device_info(device), "dtype": "float32" if args.dry_run else "bfloat16", "weights": "random",
              "dry_run": args.dry_run}
    path = write_results("end_to_end" + args.tag + ("_dry_run" if args.dry_run else ""), header, sections, args.out)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
