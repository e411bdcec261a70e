"""INT8 / FP8 scaled GEMM: ``op`` (Triton kernel, launcher, custom ops, checked public functions,
the FP8 gate) and ``reference`` (pure torch). Import the submodules: ``op`` needs Triton."""
