"""Test-wide settings: the fixtures are tiny, and on a 2-core machine one torch thread per process
is faster for them than two (and immune to a busy neighbour process)."""

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the runtime-only tests run without torch
    pass
