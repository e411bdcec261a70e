"""Attention prologue: ``op`` (Triton kernel, launcher, custom op, the public function) and
``reference`` (pure torch). Import the submodules: ``op`` needs Triton, ``reference`` does not."""
