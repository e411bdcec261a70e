"""The process's C heap while torch runs a model on the CPU: freed pages reused, and given back.

torch allocates every intermediate tensor with ``malloc``. glibc serves a request above its mmap
threshold (at most 32 MiB, often much less) with a fresh ``mmap`` and unmaps it on ``free``, so every
large activation of every layer is faulted in page by page and zeroed by the kernel, call after
call: a 0.1b forward at 512x384 spent ~13 % of its time there, and quantizing a tiny checkpoint at
1024x768 spent 11.8 s of its 26 s in the kernel (sys time; 4.1 million page faults).
:func:`reuse_freed_pages` serves large blocks from the heap instead (``M_MMAP_MAX`` 0) and keeps
freed pages mapped (a high ``M_TRIM_THRESHOLD``) while a block of code runs, so the next layer
reuses pages already resident. What the heap holds once the block ends stays for the next call, or
is returned at once with ``release=True`` (``malloc_trim``), and glibc's usual thresholds are set
back when the last such block ends.

The price can be memory left in holes: a freed block too small for a later request stays resident
beside the heap's new top. Measured (AVX2 EPYC, see benchmarks/results/quantize.md): forwards keep
their peak (0.1b 512x384, 0.4b 1024x768) and run 10-16 % faster; quantizing 0.4b at 1024x768 (4 + 2
images) runs 21 % faster at the same peak (3.68 GiB on, 3.72 off; it was 3.95 against 3.54 while loading
left 1.6 GB of freed heap behind it), a tiny checkpoint's at 1.21-1.24 GB against 1.10.
``SAPIENS2_EDGE_HEAP_REUSE=0`` turns it off where memory is the limit. Work that runs in phases
gives the free pages back between them with :func:`release_freed_heap`: quantization after
preprocessing, after each calibration pass, after each half block of block-by-block calibration
(whose heap otherwise grew over a half block's 32 forwards and kept it: RSS after the last half block
2624 -> 1517 MiB for an 8-block model of 0.4b's width) and before each batch of its report
(benchmarks/results/quantize.md).

Loading frees memory too: ONNX Runtime parses a model's weights into many buffers, copies them into its
own layouts (prepacked GEMM weights) and frees them. glibc keeps freed blocks of its heap for later
allocations unless they lie at the heap's top, so where they fell decided whether a 0.4b int8 session
held 581 MB or 721 MB for the life of the process. :func:`release_freed_heap` (``malloc_trim(0)``)
returns every free page of the heap to the system: 521 MB either way, in milliseconds.

glibc only (elsewhere nothing changes).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import threading
from collections.abc import Iterator

OPT_OUT = "SAPIENS2_EDGE_HEAP_REUSE"
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (glibc's malloc.h)
GLIBC_MMAP_MAX = 65536  # glibc's default M_MMAP_MAX
GLIBC_TRIM_THRESHOLD = 64 << 20  # what glibc's dynamic trim threshold settles at (2 x the 32 MiB mmap maximum)
KEEP_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the largest it can say

_lock = threading.Lock()
_depth = 0


@functools.cache
def _glibc():
    """The C library when it is glibc (it has ``gnu_get_libc_version``, ``mallopt`` and ``malloc_trim``);
    looked up once (the torch backend enters :func:`reuse_freed_pages` on every call)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    if not all(hasattr(libc, f) for f in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def release_freed_heap() -> bool:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim(0)``); whether it ran (not
    off glibc)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def reuse_depth() -> int:
    """How many :func:`reuse_freed_pages` blocks are running now, in all threads."""
    return _depth


@contextlib.contextmanager
def reuse_freed_pages(release: bool = False) -> Iterator[bool]:
    """``with reuse_freed_pages():`` large blocks come from the heap and freed pages stay mapped while
    the block runs (in every thread: mallopt is process-wide; blocks nest and overlap, the last to end
    sets glibc's thresholds back). ``release``: give the heap's free pages back if the policy ends with
    this block (not while an enclosing or overlapping block still runs). Yields whether the policy is
    on (glibc, not turned off by ``SAPIENS2_EDGE_HEAP_REUSE=0``)."""
    global _depth
    libc = None if os.environ.get(OPT_OUT, "1") == "0" else _glibc()
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
                if release:
                    libc.malloc_trim(0)
