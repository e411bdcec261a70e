"""Benchmark of the 4K tokenizer kernels against the reference and off-the-shelf attention.

Sections (1b-4K at 4096x3072: a 256x192 patch grid, 3072 windows of 17 tokens per image):
  window attention   reference permute + SDPA + permute (the baseline), SDPA on pre-permuted
                     tensors (layout for free), FlexAttention with a same-window mask over the
                     packed sequence (torch.compile), ours, ours CLS-only (the last block)
                     for head widths 64 (1b, C=1536), 80 (0.8b, C=1280), 76 (5b, C=2432)
  gather + RMSNorm   reference partition (permute, cat, add) + rms_norm vs the fused gather
  tokenizer          the whole 1b-4K tokenizer (4 blocks): reference chunk loop vs fused path
Reports ms, GB/s and % of the measured HBM peak (bytes each variant must move at least: q, k, v
in, o out), TFLOP/s, speed-up over the reference. Results: benchmarks/results/kernels/.

    python benchmarks/kernels/bench_window_attention.py                 # GPU
    python benchmarks/kernels/bench_window_attention.py --dry-run       # CPU, interpreter, tiny
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]  # roofline.py; the repository (when not pip-installed)

WIDTHS = {64: ("1b", 1536, 24), 80: ("0.8b", 1280, 16), 76: ("5b", 2432, 32)}
DTYPES = ("bf16", "fp16", "fp32")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", default="64,80,76", help="head widths to run (of 64, 80, 76)")
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--batch", type=int, default=1, help="images of 4096x3072 (3072 windows each)")
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compile takes a while)")
    p.add_argument("--no-tokenizer", action="store_true", help="skip the whole-tokenizer section")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes: checks the script")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/kernels)")
    args = p.parse_args(argv)
    args.widths = [int(w) for w in args.widths.split(",")]
    if any(w not in WIDTHS for w in args.widths):
        p.error(f"--widths must be among {sorted(WIDTHS)}")
    return args


def flex_window(q, k, v, heads, seq):
    """FlexAttention over the packed (1, heads, windows*seq, d) sequence with a same-window mask."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n, _, c = q.shape
    length = n * seq
    mask = create_block_mask(lambda b, h, qi, ki: qi // seq == ki // seq, 1, 1, length, length, device=q.device)
    flex = torch.compile(flex_attention)

    def run():
        pack = lambda t: t.reshape(1, length, heads, c // heads).transpose(1, 2)  # noqa: E731
        o = flex(pack(q), pack(k), pack(v), block_mask=mask)
        return o.transpose(1, 2).reshape(n, seq, c)
    return run


def attention_section(args, device, dtype, peaks, width):
    import torch
    import torch.nn.functional as F
    from roofline import row, time_ms

    from sapiens2_edge.kernels.window_attention import op, reference

    name, c, heads = WIDTHS[width]
    n, seq = (7, 17) if args.dry_run else (3072 * args.batch, 17)
    if args.dry_run:
        c, heads = 2 * width, 2
    q, k, v = torch.randn(n, seq, 3 * c, device=device, dtype=dtype).split(c, dim=-1)
    esz = q.element_size()
    io = 4 * n * seq * c * esz
    flops = 4 * n * heads * seq * seq * (c // heads)
    t = lambda fn: time_ms(fn, device, reps=args.reps)  # noqa: E731
    base = t(lambda: reference.window_attention(q, k, v, heads))
    rows = [row("reference permute+SDPA+permute", base, io, flops, peaks, base)]
    qp, kp, vp = (x.reshape(n, seq, heads, -1).transpose(1, 2).contiguous() for x in (q, k, v))
    rows.append(row("SDPA, pre-permuted inputs", t(lambda: F.scaled_dot_product_attention(qp, kp, vp)), io, flops,
                    peaks, base))
    if not args.no_flex and device.type == "cuda" and width == args.widths[0]:  # one compile is enough
        try:
            rows.append(row("FlexAttention window mask", t(flex_window(q, k, v, heads, seq)), io, flops, peaks, base))
        except Exception as e:  # noqa: BLE001 - report, do not hide the other rows
            rows.append({"variant": "FlexAttention window mask", "error": f"{type(e).__name__}: {e}"[:200]})
    rows.append(row("ours (Triton)", t(lambda: op.launch_window_attention(q, k, v, heads)), io, flops, peaks, base))
    cls_io = (2 * n * c + 2 * n * seq * c) * esz
    q0 = q[:, 0]
    cls_base = t(lambda: reference.window_attention_cls(q0, k, v, heads))
    rows.append(row("reference CLS-only", cls_base, cls_io, flops / seq, peaks, None))
    rows.append(row("ours CLS-only (last block)", t(lambda: op.launch_window_attention_cls(q0, k, v, heads)), cls_io,
                    flops / seq, peaks, cls_base))
    err = (op.launch_window_attention(q, k, v, heads).float()
           - reference.window_attention(q.float(), k.float(), v.float(), heads)).abs().max().item()
    rows[-3]["max_err_vs_fp32"] = f"{err:.2e}"
    return f"window attention d={width} ({name}: {n} windows x {seq}, C={c}, {heads} heads)", rows


def gather_section(args, device, dtype, peaks):
    import torch
    from roofline import row, time_ms

    from sapiens2_edge.kernels.window_attention import op, reference

    b, hp, wp, c = (1, 8, 12, 64) if args.dry_run else (args.batch, 256, 192, 1536)
    tokens = torch.randn(b, c, hp * wp, device=device, dtype=dtype).transpose(1, 2)  # patch-embed layout
    cls, pos, ln = (torch.randn(*s, device=device, dtype=dtype) for s in ((1, 1, c), (1, 17, c), (c,)))
    n = b * hp * wp // 16
    io = (b * hp * wp * c + 2 * n * 17 * c) * tokens.element_size()
    t = lambda fn: time_ms(fn, device, reps=args.reps)  # noqa: E731
    base = t(lambda: reference.window_partition_norm(tokens, cls, pos, ln, hp, wp, 4, 1e-6))
    ours = t(lambda: op.launch_window_partition_norm(tokens, cls, pos, ln, hp, wp, 4, 1e-6))
    return f"gather + RMSNorm ({hp}x{wp} grid, C={c})", [
        row("reference partition + rms_norm", base, io, None, peaks, base),
        row("ours (fused gather + norm)", ours, io, None, peaks, base)]


def tokenizer_section(args, device, dtype, peaks):

    import torch
    from roofline import row, time_ms, with_mode

    from sapiens2_edge.models.arch import ArchSpec, get_preset
    from sapiens2_edge.models.backbone import WindowTokenizer

    arch = get_preset("1b-4k")
    b, hp, wp = (1, 8, 12) if args.dry_run else (args.batch, 256, 192)
    if args.dry_run:
        arch = ArchSpec(64, 1, 2, (2,), 128, tokenizer_depth=2)
    tok = WindowTokenizer(arch).to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        tok.local_pos_embed.normal_(0, 0.02)
        tok.w_cls.normal_(0, 0.02)
    tokens = torch.randn(b, arch.embed_dim, hp * wp, device=device, dtype=dtype).transpose(1, 2)
    t = lambda fn: time_ms(fn, device, warmup=2, reps=max(3, args.reps // 4))  # noqa: E731

    def forward():
        with torch.inference_mode():
            return tok(tokens, hp, wp)
    base = t(with_mode("reference", forward))
    ours = t(with_mode("triton", forward))
    ref_out, out = with_mode("reference", forward)(), with_mode("triton", forward)()
    err = (out.float() - ref_out.float()).abs().max().item()
    title = f"whole tokenizer ({arch.name}, {arch.tokenizer_depth} blocks, {b}x{hp}x{wp} patches)"
    return title, [row("reference (chunk loop)", base, None, None, peaks, base),
                   {**row("ours (fused)", ours, None, None, peaks, base), "max_abs_diff": f"{err:.2e}"}]


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from roofline import bench_device, device_info, measure_peaks, write_results

    device = bench_device(args.dry_run)
    if device is None:
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if args.dry_run and dtype == torch.bfloat16:
        dtype = torch.float32  # the interpreter is wrong for bf16 dots
    peaks = measure_peaks(device, small=args.dry_run)
    sections = {}
    with torch.inference_mode():
        for width in args.widths:
            title, rows = attention_section(args, device, dtype, peaks, width)
            sections[title] = rows
        title, rows = gather_section(args, device, dtype, peaks)
        sections[title] = rows
    if not args.no_tokenizer:
        title, rows = tokenizer_section(args, device, dtype, peaks)
        sections[title] = rows
    header = {**device_info(device), "dtype": str(dtype), "batch": args.batch, "peaks": peaks,
              "dry_run": args.dry_run}
    path = write_results("window_attention" + ("_dry_run" if args.dry_run else ""), header, sections, args.out)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
