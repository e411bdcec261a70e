"""FP8 E4M3 rowwise GEMM at Sapiens2 shapes: Triton kernel vs torch reference, torch._scaled_mm, bf16.

Run on a GPU of compute capability >= 8.9 with no arguments (about a minute on an H100); writes
benchmarks/results/kernels/fp8_gemm.{json,md} (a note saying why, on older GPUs). ``--dry-run``
exercises it on CPU.
"""

from _gemm_bench import run
from _quant_bench import parse_args

if __name__ == "__main__":
    run("fp8", parse_args(__doc__))
