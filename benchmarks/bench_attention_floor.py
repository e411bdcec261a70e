"""What the model's attention alone costs on this CPU, in the best kernels we can reach, against the
whole-model budget of a speed-up target over torch fp32 eager (same run).

At Sapiens2's sizes attention is one softmax over T x T scores per head and block (T = 3081 tokens at
1024x768); with a head width of 64, each score costs 4 x 64 = 256 GEMM operations and one exponential.
On AMX the GEMM part runs at up to 1024 bf16 operations per core and cycle, so the exponentials (16
per AVX-512 instruction, a dozen instructions each, plus the running max, sum and rescale of an online
softmax) decide the time. The rows:

    ov-bf16        MatMul -> Multiply -> Softmax -> MatMul in bf16, the form our IRs carry: OpenVINO fuses
                   it into one Snippets attention subgraph (AMX GEMMs, scores never in memory)
    ov-bf16-d8     the same at head width 8 (GEMM work / 8, the same number of exponentials): how much
                   of the time the softmax takes
    ov-sdpa-bf16   OpenVINO's ScaledDotProductAttention operation (its own kernel where it keeps one)
    torch-bf16     torch's scaled_dot_product_attention in bf16 (its CPU flash-attention kernel)

Each row is one block's attention at the preset's head count (batch 1), median of --runs; "whole model"
multiplies by the depth. torch fp32 eager of the whole model (random weights, build_model) is timed in
the same run for the budget: the time the whole model may take at --target x torch.

    python benchmarks/bench_attention_floor.py --arch 0.4b --size 1024x768
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def median_time(fn, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def openvino_attention(heads: int, tokens: int, width: int, sdpa: bool):
    """A compiled bf16 attention of (1, heads, tokens, width) q, k, v and a call that runs it."""
    import openvino as ov
    from openvino import opset13 as ops

    q, k, v = (ops.parameter([1, heads, tokens, width], np.float32, name=n) for n in "qkv")
    scale = ops.constant(np.float32(width ** -0.5))
    if sdpa:
        out = ops.scaled_dot_product_attention(q, k, v, scale=scale)
    else:
        out = ops.matmul(ops.softmax(ops.multiply(ops.matmul(q, k, False, True), scale), -1), v, False, False)
    compiled = ov.Core().compile_model(ov.Model([out], [q, k, v]), "CPU",
                                       {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16"})
    request = compiled.create_infer_request()
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((1, heads, tokens, width)).astype(np.float32) for _ in range(3)]
    return lambda: request.infer(data)


def torch_attention(heads: int, tokens: int, width: int):
    import torch

    q, k, v = (torch.randn(1, heads, tokens, width, dtype=torch.bfloat16) for _ in range(3))

    def run():
        with torch.no_grad():
            torch.nn.functional.scaled_dot_product_attention(q, k, v)

    return run


def torch_fp32_model(arch: str, size: tuple[int, int], runs: int) -> float:
    import torch

    from sapiens2_edge.models.model import build_model

    model = build_model(arch, "seg", input_size=size, seed=0).eval()
    x = torch.randn(1, 3, *size)

    def run():
        with torch.no_grad():
            model(x)

    return median_time(run, runs, warmup=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="0.4b")
    p.add_argument("--size", default="1024x768")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--model-runs", type=int, default=3, help="runs of the torch fp32 whole model")
    p.add_argument("--target", type=float, default=8.0, help="speed-up over torch fp32 eager to budget for")
    a = p.parse_args(argv)
    import torch

    from sapiens2_edge.models.arch import get_preset
    from sapiens2_edge.spec import NUM_PREFIX_TOKENS

    h, w = (int(v) for v in a.size.split("x"))
    arch = get_preset(a.arch)
    rows_, cols = arch.grid((h, w))
    tokens, heads, width, depth = rows_ * cols + NUM_PREFIX_TOKENS, arch.num_heads, arch.head_dim, arch.depth
    ops_per_block = 4 * tokens * tokens * width * heads
    print(f"{a.arch} at {h}x{w}: {tokens} tokens, {heads} heads of width {width}, {depth} blocks; "
          f"attention {ops_per_block * depth / 1e9:.0f} GOP per forward; {torch.get_num_threads()} threads")
    rows = [("ov-bf16", lambda: openvino_attention(heads, tokens, width, sdpa=False), width),
            ("ov-bf16-d8", lambda: openvino_attention(heads, tokens, 8, sdpa=False), 8),
            ("ov-sdpa-bf16", lambda: openvino_attention(heads, tokens, width, sdpa=True), width),
            ("torch-bf16", lambda: torch_attention(heads, tokens, width), width)]
    results = {}
    print("| row | ms per block | whole model (s) | GOP/s | exponentials per ns |")
    print("|---|---|---|---|---|")
    for name, make, d in rows:
        seconds = median_time(make(), a.runs)
        results[name] = seconds
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds * depth:.2f} | {4 * tokens * tokens * d * heads / seconds / 1e9:.0f} "
              f"| {heads * tokens * tokens / seconds / 1e9:.2f} |")
    fp32 = torch_fp32_model(a.arch, (h, w), a.model_runs)
    budget = fp32 / a.target
    best = min(v for k, v in results.items() if k != "ov-bf16-d8") * depth  # d8 is not the model's attention
    print(f"\ntorch fp32 eager, whole model: {fp32:.3f} s; {a.target:g}x of it: {budget:.3f} s for the whole model")
    print(f"fastest attention alone: {best:.3f} s = {best / budget * 100:.0f} % of that budget; "
          f"the rest of the model would have {max(budget - best, 0):.3f} s")
    print(f"softmax share of OpenVINO's attention (head width 8 over width {width}): "
          f"{results['ov-bf16-d8'] / results['ov-bf16'] * 100:.0f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
