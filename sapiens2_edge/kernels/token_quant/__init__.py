"""Per-token (or static) int8 / E4M3 activation quantization, QuantLinear's input pass: ``op``
(Triton kernel, launcher, custom op, the public function) and ``reference`` (pure torch). Import
the submodules: ``op`` needs Triton."""
