"""Shared pieces of the quantized-GEMM and fused-quantization benchmarks.

Timing: median of CUDA-event times with the L2 flushed before each call (``perf_counter`` on CPU,
where ``--dry-run`` only exercises the script under the Triton interpreter). Peaks are measured in
the same process with large square GEMMs per input type (bf16 ``torch.matmul``, int8
``torch._int_mm``, E4M3 ``torch._scaled_mm``) and a 1 GiB device copy, so "% of peak" is of what
this GPU actually reaches, not of a datasheet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "kernels"

# Sapiens2 presets (sapiens2_edge.models.arch.PRESETS) the benchmarks cover by default, and the
# main encoder's token count at 1024x768: 64x48 patches + 9 prefix tokens.
PRESETS = ("sapiens2_0.4b", "sapiens2_0.8b", "sapiens2_1b")
TOKENS = 3081


def parse_args(doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--batch", type=int, default=1, help="images per call (M = 3081 x batch)")
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU: tiny shapes through the Triton interpreter, to check the script runs")
    p.add_argument("--out", type=Path, default=None, help=f"results directory (default {RESULTS})")
    args = p.parse_args()
    if args.dry_run:  # before anything imports Triton: the interpreter is chosen at import
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["SAPIENS2_EDGE_KERNELS"] = "triton"
    sys.path.insert(0, str(ROOT))
    return args


def linear_shapes(preset: str) -> list[tuple[str, int, int]]:
    """(name, K, N) of the main-encoder linears of a preset."""
    from sapiens2_edge.models.arch import get_preset

    a = get_preset(preset)
    c, hd = a.embed_dim, a.head_dim
    kv = min(a.kv_heads) * hd
    return [("wq/proj", c, c), ("wk/wv (GQA)", c, kv), ("ffn.w12", c, 2 * a.ffn_hidden), ("ffn.w3", a.ffn_hidden, c)]


def time_ms(fn: Callable[[], object], device, warmup: int = 5, reps: int = 20) -> float:
    """roofline.time_ms on CUDA; one untimed + one timed call in a CPU dry run (the interpreter is slow)."""
    if device.type != "cuda":
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    from roofline import time_ms as cuda_time_ms

    return cuda_time_ms(fn, device, warmup=warmup, reps=reps)


def measure_peaks(device, kinds=("bf16", "int8", "fp8", "hbm")) -> dict:
    """Measured peaks: TFLOP/s (TOP/s for int8) of an 8192^3 GEMM per type, HBM GB/s of a copy."""
    import torch

    peaks: dict[str, float] = {}
    if device.type != "cuda":
        return {"bf16": 1.0, "int8": 1.0, "fp8": 1.0, "hbm": 1.0}
    n = 8192
    flops = 2 * n**3
    if "bf16" in kinds:
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        peaks["bf16"] = flops / time_ms(lambda: a @ a, device) / 1e9
    if "int8" in kinds:
        q = torch.randint(-127, 128, (n, n), device=device, dtype=torch.int8)
        qt = q.t().contiguous().t()
        peaks["int8"] = flops / time_ms(lambda: torch._int_mm(q, qt), device) / 1e9
    if "fp8" in kinds and torch.cuda.get_device_capability(device) >= (8, 9):
        f = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
        one = torch.ones((), device=device)
        peaks["fp8"] = flops / time_ms(lambda: torch._scaled_mm(f, f.t(), scale_a=one, scale_b=one,
                                                                  out_dtype=torch.bfloat16), device) / 1e9
    if "hbm" in kinds:
        src = torch.empty(1 << 29, dtype=torch.float16, device=device)
        dst = torch.empty_like(src)
        peaks["hbm"] = 2 * src.numel() * 2 / time_ms(lambda: dst.copy_(src), device) / 1e6
    return {k: round(v, 1) for k, v in peaks.items()}


def header(device, peaks: dict, args: argparse.Namespace, command: str) -> dict:
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    h = {"device": name, "torch": torch.__version__, "command": command, "batch": args.batch,
         "tokens_per_image": TOKENS, "measured_peaks": peaks,
         "peak_units": "bf16/int8/fp8: TFLOP/s (TOP/s) of an 8192^3 GEMM; hbm: GB/s of a 1 GiB copy"}
    try:
        import triton

        h["triton"] = triton.__version__
    except ImportError:
        pass
    if args.dry_run:
        h["note"] = "DRY RUN on CPU through the Triton interpreter: the numbers mean nothing"
    return h


def gemm_row(variant: str, ms: float | None, flops: float, peak: float | None, base_ms: float | None,
             note: str = "") -> dict:
    r: dict = {"variant": variant}
    if ms is None:
        r["note"] = note
        return r
    tf = flops / ms / 1e9
    r.update({"ms": round(ms, 4), "TFLOP/s": round(tf, 1)})
    if peak:
        r["% peak"] = round(100 * tf / peak, 1)
    if base_ms:
        r["vs bf16"] = round(base_ms / ms, 2)
    if note:
        r["note"] = note
    return r


def write(stem: str, head: dict, sections: dict[str, list[dict]], out: Path | None) -> Path:
    out = Path(out or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({**head, "sections": sections}, indent=1) + "\n")
    lines = [f"## {stem}", "", "```", json.dumps(head, indent=1), "```", ""]
    for title, rows in sections.items():
        cols = list(dict.fromkeys(k for r in rows for k in r))
        lines += [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
        lines.append("")
    (out / f"{stem}.md").write_text("\n".join(lines))
    return out / f"{stem}.md"
