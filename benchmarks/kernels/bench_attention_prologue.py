"""Benchmark of the main-encoder attention prologue (QK-RMSNorm + bf16-rounded RoPE + GQA layout).

Sections, per Sapiens2 shape at 1024x768 (T = 9 + 64*48 = 3081 tokens):
  prologue          reference (view/transpose, rms_norm, apply_rope with bf16 rounding, repeat of
                    kv heads), the same under torch.compile, ours (kv heads kept for SDPA's native
                    GQA), ours with the kv heads expanded. GB/s = q/k/v read + written once.
  attention block   the whole Attention.forward (projections, prologue, SDPA, proj, LayerScale):
                    reference eager vs ours; SDPA alone for scale.
Results: benchmarks/results/kernels/attention_prologue.{md,json}.

    python benchmarks/kernels/bench_attention_prologue.py             # GPU
    python benchmarks/kernels/bench_attention_prologue.py --dry-run   # CPU, interpreter, tiny
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]  # roofline.py; the repository (when not pip-installed)

# name: (C, heads, kv heads); the GQA layers use heads / 2 kv heads
SHAPES = {"0.4b-gqa": (1024, 16, 8), "0.8b-gqa": (1280, 16, 8), "1b-mha": (1536, 24, 24), "1b-gqa": (1536, 24, 12),
          "5b-gqa": (2432, 32, 16)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--grid", default="64x48", help="patch grid Hp x Wp (64x48 = 1024x768)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes: checks the script")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.shapes = args.shapes.split(",")
    if any(s not in SHAPES for s in args.shapes):
        p.error(f"--shapes must be among {', '.join(SHAPES)}")
    args.hp, args.wp = (int(v) for v in args.grid.lower().split("x"))
    return args


def run_shape(args, device, dtype, peaks, shape):
    import torch
    from roofline import row, time_ms, with_mode

    from sapiens2_edge.kernels.attention_prologue import op, reference
    from sapiens2_edge.models.backbone import Attention, RopeEmbedding

    c, h, kv = SHAPES[shape]
    hp, wp = args.hp, args.wp
    if args.dry_run:
        c, h, kv, hp, wp = c // 16, 2, max(1, 2 * kv // h), 3, 4
    d = c // h
    t = 9 + hp * wp
    b = args.batch
    sin, cos = (x.to(device) for x in RopeEmbedding(d)(hp, wp))
    q, k, v = torch.randn(b, t, (h + 2 * kv) * d, device=device, dtype=dtype).split([h * d, kv * d, kv * d], -1)
    qw, kw = (1 + 0.1 * torch.randn(d, device=device, dtype=dtype) for _ in range(2))
    args_ = (q, k, v, qw, kw, sin, cos, h, kv, 1e-6, True)
    esz = q.element_size()
    io = 2 * b * t * (h + 2 * kv) * d * esz
    io_expand = b * t * (h + 2 * kv) * d * esz + b * t * 3 * h * d * esz
    tm = lambda fn: time_ms(fn, device, reps=args.reps)  # noqa: E731
    base = tm(lambda: reference.attention_prologue(*args_, True))
    rows = [row("reference eager (repeat kv)", base, io_expand, None, peaks, base)]
    if not args.no_compile and device.type == "cuda":
        compiled = torch.compile(reference.attention_prologue)
        rows.append(row("reference + torch.compile", tm(lambda: compiled(*args_, True)), io_expand, None, peaks, base))
    rows.append(row("ours, kv heads kept (native GQA)", tm(lambda: op.launch(*args_, False)), io,
                    None, peaks, base))
    rows.append(row("ours, kv heads expanded", tm(lambda: op.launch(*args_, True)), io_expand, None,
                    peaks, base))
    mism = sum((o != r).sum().item() for o, r in zip(op.launch(*args_, True),
                                                       reference.attention_prologue(*args_, True), strict=True))
    rows[-1]["elements != reference"] = mism
    sections = {f"prologue {shape} (B={b}, T={t}, {h} heads, {kv} kv, d={d})": rows}

    attn = Attention(c, h, kv).to(device=device, dtype=dtype).eval()
    x = torch.randn(b, t, c, device=device, dtype=dtype)
    rope = (sin, cos, True)
    flops = 4 * b * t * c * (c + kv * d) + 4 * b * h * t * t * d  # projections + attention
    block_base = tm(with_mode("reference", lambda: attn(x, rope)))
    qs, ks, vs = reference.attention_prologue(*args_, False)
    gqa = h != kv
    brows = [row("reference Attention.forward", block_base, None, flops, peaks, block_base),
             row("ours (prologue op + SDPA native GQA)", tm(with_mode("triton", lambda: attn(x, rope))), None, flops,
                 peaks, block_base),
             row("SDPA alone", tm(lambda: torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, enable_gqa=gqa)),
                 None, 4 * b * h * t * t * d, peaks, None)]
    sections[f"attention block {shape}"] = brows
    return sections


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from roofline import bench_device, device_info, measure_peaks, write_results

    device = bench_device(args.dry_run)
    if device is None:
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if args.dry_run and dtype == torch.bfloat16:
        dtype = torch.float32
    peaks = measure_peaks(device, small=args.dry_run)
    sections = {}
    with torch.inference_mode():
        for shape in args.shapes:
            sections.update(run_shape(args, device, dtype, peaks, shape))
    header = {**device_info(device), "dtype": str(dtype), "batch": args.batch, "grid": f"{args.hp}x{args.wp}",
              "peaks": peaks, "dry_run": args.dry_run}
    path = write_results("attention_prologue" + ("_dry_run" if args.dry_run else ""), header, sections, args.out)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
