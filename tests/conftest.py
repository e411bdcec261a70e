"""Test-wide settings: the fixtures are tiny, and on a 2-core machine one torch thread per process
is faster for them than two (and immune to a busy neighbour process)."""

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the runtime-only tests run without torch
    pass


import os  # noqa: E402

# tests/interpreted/ runs in its own process with TRITON_INTERPRET=1 (tests/test_kernels_attention.py)
collect_ignore = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["interpreted"]
