"""Window attention of the 4K tokenizer: ``op`` (Triton kernels, launchers, custom ops, the public
functions) and ``reference`` (pure torch). Import the submodules: ``op`` needs Triton."""
