"""INT8 W8A8 GEMM at Sapiens2 shapes: Triton kernel vs torch reference, torch._int_mm, torchao, bf16.

Run on a GPU with no arguments (about a minute on an H100, autotuning included); writes
benchmarks/results/kernels/int8_gemm.{json,md}. ``--dry-run`` exercises it on CPU.
"""

from _gemm_bench import run
from _quant_bench import parse_args

if __name__ == "__main__":
    run("int8", parse_args(__doc__))
