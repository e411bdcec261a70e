"""Per-token (or static) int8 / E4M3 quantization of activations at Sapiens2 widths: QuantLinear's
input pass on the Triton path.

Variants: our Triton kernel (one read of x, one write of q + scales), the eager torch reference
(absmax + divide + round + cast: several passes) and ``torch.compile`` of that reference (the
off-the-shelf fusion). Memory-bound, so reported as GB/s of the minimal traffic and % of the
measured copy bandwidth. M = 3081 x batch for batch and 8 x batch. Run on a GPU with no arguments
(well under a minute on an H100); writes benchmarks/results/kernels/token_quant.{json,md}.
"""

from __future__ import annotations

import os
import sys

from _quant_bench import TOKENS, header, measure_peaks, parse_args, time_ms, write


def mem_row(variant: str, ms: float | None, nbytes: float, hbm: float, base_ms: float | None, note: str = "") -> dict:
    if ms is None:
        return {"variant": variant, "note": note}
    gbps = nbytes / ms / 1e6
    r = {"variant": variant, "ms": round(ms, 4), "GB/s": round(gbps, 1), "% HBM": round(100 * gbps / hbm, 1)}
    if base_ms:
        r["vs eager ref"] = round(base_ms / ms, 2)
    if note:
        r["note"] = note
    return r


def bench_case(m: int, c: int, qdtype: str, device, peaks: dict, compiled) -> list[dict]:
    import torch

    from sapiens2_edge.kernels.token_quant.op import LAUNCHES, per_token_quant
    from sapiens2_edge.kernels.token_quant.reference import quant_rows_reference

    act = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randn(m, c, device=device).to(act)
    nbytes = m * c * x.element_size() + m * c + 4 * m
    hbm = peaks["hbm"]
    ref = lambda: quant_rows_reference(x, qdtype)  # noqa: E731
    ours = lambda: per_token_quant(x, qdtype)  # noqa: E731
    before = LAUNCHES["token_quant"]
    q, s = ours()
    if LAUNCHES["token_quant"] == before:
        sys.exit("the Triton kernel did not run")
    qr, sr = ref()
    mism = (q.view(torch.uint8) != qr.view(torch.uint8)).float().mean().item()
    base = time_ms(ref, device)
    rows = [mem_row("torch eager reference", base, nbytes, hbm, base),
            mem_row("triton fused kernel", time_ms(ours, device), nbytes, hbm, base,
                    f"scale max rel diff {((s - sr).abs() / sr).max().item():.1e}, q bytes differing {mism:.2%}")]
    if compiled is not None:
        fn = lambda: compiled(x, qdtype)  # noqa: E731
        try:
            fn()
            rows.append(mem_row("torch.compile(reference)", time_ms(fn, device), nbytes, hbm, base))
        except Exception as e:  # noqa: BLE001 - report any compiler failure as a row, keep benchmarking
            rows.append(mem_row("torch.compile(reference)", None, nbytes, hbm, base, f"failed: {str(e)[:100]}"))
    return rows


def main() -> None:
    args = parse_args(__doc__)
    import torch

    from sapiens2_edge.kernels.token_quant.reference import quant_rows_reference
    from sapiens2_edge.models.arch import get_preset

    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU, or pass --dry-run to exercise the script on CPU")
    peaks = measure_peaks(device, ("hbm",))
    command = "python benchmarks/kernels/bench_token_quant.py" + (" --dry-run" if args.dry_run else "")
    head = header(device, peaks, args, command)
    head["traffic"] = "x read once (bf16) + q written (1 B) + scales (4 B/row)"
    compiled = None if args.dry_run else torch.compile(quant_rows_reference, dynamic=True)
    if args.dry_run:
        cases = [(37, 72)]
    else:
        widths = sorted({get_preset(p).embed_dim for p in args.presets.split(",")})
        cases = [(TOKENS * b, c) for b in (args.batch, 8 * args.batch) for c in widths]
    sections = {}
    for m, c in cases:
        for qdtype in ("int8", "fp8"):
            rows = bench_case(m, c, qdtype, device, peaks, compiled)
            sections[f"per-token quantization (QuantLinear input), {qdtype}: M={m} C={c}"] = rows
            print(f"{qdtype} M={m} C={c}: " + ", ".join(
                f"{r['variant']} {r.get('ms')} ms {r.get('% HBM', '')}% HBM" for r in rows), flush=True)
    print(write("token_quant", head, sections, args.out))


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "8")
    main()
