"""Kernels compiled for whichever Triton mode is active when they first launch.

``triton.jit`` decides between the compiler and the interpreter (``TRITON_INTERPRET=1``) when the
decorator runs, i.e. at import. Wrapping the plain kernel function lazily lets a process import
these modules first and turn the interpreter on later (the CPU tests do, inside their own
scope), and keeps ``import sapiens2_edge`` free of Triton. Compiled kernels are autotuned over
``configs``; the interpreter runs one small fixed configuration (autotuning it would only burn
CPU time).
"""

from __future__ import annotations

import collections
import os
from typing import Callable, Sequence

#: Launch counts per kernel name; tests read them to prove the Triton path really ran.
LAUNCHES: collections.Counter = collections.Counter()


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


class LazyJit:
    """``triton.jit(fn)`` (autotuned over ``configs`` when compiled), built on first launch."""

    def __init__(self, fn: Callable, name: str, configs: Sequence[dict] = (), key: Sequence[str] = ()):
        self.fn, self.name = fn, name
        self.configs, self.key = tuple(configs), list(key)
        self._built: dict[bool, object] = {}

    def _kernel(self, interp: bool):
        kernel = self._built.get(interp)
        if kernel is None:
            import triton

            kernel = triton.jit(self.fn)
            if self.configs and not interp:
                cfgs = [triton.Config({k: v for k, v in c.items() if k not in ("num_warps", "num_stages")},
                                      num_warps=c.get("num_warps", 4), num_stages=c.get("num_stages", 3))
                        for c in self.configs]
                kernel = triton.autotune(cfgs, key=self.key)(kernel)
            self._built[interp] = kernel
        return kernel

    def launch(self, grid: Callable[[dict], tuple], args: Sequence, interp_meta: dict, **const) -> None:
        """Run the kernel. ``grid(meta)`` gets the block sizes; ``interp_meta`` is the configuration
        used where nothing is autotuned; ``const`` are constexpr arguments fixed by the caller."""
        interp = interpreting()
        kernel = self._kernel(interp)
        tuned = bool(self.configs) and not interp
        meta = {} if tuned else dict(interp_meta)
        LAUNCHES[self.name] += 1
        kernel[grid if tuned else (lambda _m: grid(meta))](*args, **const, **meta)
