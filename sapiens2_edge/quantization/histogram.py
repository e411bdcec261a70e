"""The range observers' |x| histogram: ``torch.histc``'s bins, computed with fewer passes and on
every thread.

``torch.histc`` bins on one thread (5 ns per value here: 65 ms for the 3072 x 4096 input of a 0.4b
FFN's second linear). The same bins, by its own float32 arithmetic (pos = trunc(v * bins / top),
the top edge in the last bin):

* float32 |x|: the bin of every value computed element-wise (torch, all threads), then counted with
  ``np.bincount`` split over threads (it releases the GIL);
* bf16 x (the calibration forwards on CPUs with native bf16): one count per distinct |x| from the
  bit patterns (32,768 codes: no widened copy, no abs pass), then each distinct value binned.

Bin for bin what ``histc`` gives on the float32 values (tests/test_quantize_calibration.py).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

#: bf16 bit patterns of |x| (the sign bit cleared): 0x7f80 is +inf, above it NaN
BF16_MAGNITUDES = 1 << 15
#: values counted per task: more run as chunks on several threads
SPLIT_VALUES = 1 << 20
#: above this ``top`` v * bins could overflow float32: the bins are computed in float64 there
LARGEST_TOP = 1e30
_pool: tuple[ThreadPoolExecutor, int] | None = None


def _counting_pool() -> tuple[ThreadPoolExecutor, int]:
    """(the counting threads, how many): as many as torch's intra-op threads, made on first use."""
    global _pool
    if _pool is None:
        threads = max(1, min(torch.get_num_threads(), os.cpu_count() or 1))
        _pool = ThreadPoolExecutor(threads, thread_name_prefix="s2e-histogram"), threads
    return _pool


def count(codes: np.ndarray, length: int) -> np.ndarray:
    """``np.bincount(codes, minlength=length)`` of a flat array of non-negative integers, in chunks of
    :data:`SPLIT_VALUES` on several threads when it is large (np.bincount widens its input to int64
    first: 8 MB per chunk, not 100 MB for a 0.4b FFN input)."""
    if codes.size <= SPLIT_VALUES:
        return np.bincount(codes, minlength=length)
    pool, threads = _counting_pool()
    chunks = [codes[i:i + SPLIT_VALUES] for i in range(0, codes.size, SPLIT_VALUES)]
    total = np.zeros(length, dtype=np.int64)
    for f in [pool.submit(np.bincount, c, None, length) for c in chunks]:
        total += f.result()
    return total


def bf16_magnitudes(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct |x| values as float32 in ascending order, how often each occurs as float64) of a
    bf16 tensor, from counts of its bit patterns (a NaN or inf present is the last value)."""
    codes = rows.detach().view(torch.int16).numpy().view(np.uint16).reshape(-1)
    counts = count(codes, 2 * BF16_MAGNITUDES)
    counts = counts[:BF16_MAGNITUDES] + counts[BF16_MAGNITUDES:]  # +v and -v have the same |x|
    present = np.flatnonzero(counts)
    values = torch.from_numpy(present.astype(np.int16)).view(torch.bfloat16).float()
    return values, torch.from_numpy(counts[present]).double()


def _bins_of(values: torch.Tensor, bins: int, top: float, inplace: bool = False) -> torch.Tensor:
    """histc's bin of each value in [0, top]: trunc(v * bins / top) in float32, ``bins`` at the top edge
    (int16: a quarter of int64's writes). Above :data:`LARGEST_TOP` in float64: v * bins would
    overflow float32 there."""
    kind = torch.int16 if bins < 1 << 15 else torch.int32
    if not top <= LARGEST_TOP:
        return (values.double() * bins / top).to(kind)
    scaled = values.mul_(bins) if inplace else values * bins
    return scaled.div_(torch.tensor(top, dtype=torch.float32)).to(kind)


def histc_counts(values: torch.Tensor, counts: torch.Tensor | None, bins: int, top: float) -> torch.Tensor:
    """float64 histogram over [0, top] of ``values`` (float32, all in [0, top]), each occurring
    ``counts`` times (None: once; then ``values`` is a tensor of the caller's own, overwritten),
    binned as ``torch.histc(values, bins, 0, top)`` bins them."""
    if counts is None:
        per_bin = count(_bins_of(values, bins, top, inplace=True).numpy().reshape(-1), bins + 1)
        per_bin[bins - 1] += per_bin[bins]
        return torch.from_numpy(per_bin[:bins]).double()
    pos = _bins_of(values, bins, top).long().clamp_(max=bins - 1)
    return torch.zeros(bins, dtype=torch.float64).index_add_(0, pos, counts)


__all__ = ["BF16_MAGNITUDES", "bf16_magnitudes", "count", "histc_counts"]
