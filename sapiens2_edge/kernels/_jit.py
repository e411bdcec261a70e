"""Launch bookkeeping shared by every kernel: the launch counter and autotuned-or-fixed GEMM launches.

Kernel modules import Triton and decorate their kernels when they are first imported (lazily: only
a call that takes the Triton path imports them), so ``import sapiens2_edge`` stays free of Triton.
Compiled kernels may be autotuned over ``configs``; the interpreter runs one small fixed
configuration (autotuning it would only burn CPU time).
"""

from __future__ import annotations

import collections
from typing import Callable, Sequence

import triton

from .switch import interpreting

#: Launches per kernel name; the tests read it to prove the Triton path really ran.
LAUNCHES: collections.Counter = collections.Counter()


def autotuned(fn: Callable, configs: Sequence[dict], key: Sequence[str]):
    """``triton.jit(fn)``, autotuned over ``configs`` when compiled (not under the interpreter)."""
    kernel = triton.jit(fn)
    if interpreting():
        return kernel
    cfgs = [triton.Config({k: v for k, v in c.items() if k not in ("num_warps", "num_stages")},
                          num_warps=c.get("num_warps", 4), num_stages=c.get("num_stages", 3)) for c in configs]
    return triton.autotune(cfgs, key=list(key))(kernel)


def launch(name: str, kernel, grid: Callable[[dict], tuple], args: Sequence, fixed_meta: dict, **const) -> None:
    """Count and run ``kernel``. ``grid(meta)`` gets the block sizes: the autotuner's, or
    ``fixed_meta`` where nothing is autotuned; ``const`` are constexpr arguments fixed by the caller."""
    LAUNCHES[name] += 1
    if isinstance(kernel, triton.runtime.Autotuner):
        kernel[grid](*args, **const)
    else:
        kernel[lambda _m: grid(fixed_meta)](*args, **const, **fixed_meta)
