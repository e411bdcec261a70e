"""The peers benchmark's operation count: torch's FLOP counter counts nothing for the CPU attention kernel, so
the bench adds the attention's products itself (its GOP/s and share-of-peak columns depend on it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cpu_peers.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_cpu_peers", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_attention_is_counted():
    bench = load_bench()
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)  # CPU flash attention
    want = 2 * 2 * 3 * 10 * 7 * (8 + 8)  # q k^T: 2 B H Lq Lk d; scores x v: 2 B H Lq Lk d_v
    with torch.inference_mode(), FlopCounterMode(display=False) as plain:
        F.scaled_dot_product_attention(q, k, v)
    assert plain.get_total_flops() == 0  # why the bench adds its own formula
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: bench.attention_flops}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=mapping) as counted:
        F.scaled_dot_product_attention(q, k, v)
    assert counted.get_total_flops() == want
