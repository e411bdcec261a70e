#!/usr/bin/env bash
# Every GPU kernel test and every kernel benchmark in one go: the step limits sum to 560 s, so it
# fits one 10-minute device call on an H100 / H200.
# Results: benchmarks/results/kernels/*.{md,json}, logs under benchmarks/results/kernels/logs/,
# a summary of each step's exit status in benchmarks/results/kernels/run_gpu.md. When $OUT is set
# (device machines), the results folder is copied there too.
#
#   bash benchmarks/kernels/run_gpu.sh            # from the repository root
#   QUICK=1 bash benchmarks/kernels/run_gpu.sh    # smaller end-to-end set (no 1b / 1b-4K compile)
set -u
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
RES=benchmarks/results/kernels
LOGS=$RES/logs
mkdir -p "$LOGS"
SUMMARY=$RES/run_gpu.md
{
  echo "## run_gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  echo
  echo "| step | exit | seconds |"
  echo "|---|---|---|"
} > "$SUMMARY"

step() {  # step NAME SECONDS CMD...: run with a time limit, log, record the exit status
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$LOGS/$name.log"
  echo "| $name | $rc | $((SECONDS - t0)) |" >> "$SUMMARY"
}

step gpu_tests 100 python -m pytest -q -m gpu -rs tests/test_kernels_gpu_attention.py tests/test_kernels_gpu_gemm.py
step window_attention 60 python benchmarks/kernels/bench_window_attention.py
step attention_prologue 45 python benchmarks/kernels/bench_attention_prologue.py
for g in int8_gemm fp8_gemm token_quant; do
  [ -f "benchmarks/kernels/bench_$g.py" ] && step "$g" 45 python "benchmarks/kernels/bench_$g.py"
done
step end_to_end_0.4b 100 python benchmarks/kernels/bench_end_to_end.py --models 0.4b --fp8 --reps 5 --tag _0.4b
if [ -z "${QUICK:-}" ]; then
  step end_to_end_1b 120 python benchmarks/kernels/bench_end_to_end.py --models 1b,1b-4k --reps 5 --tag _1b \
    --variants ref-eager,ref-compile,ours-eager
fi
cat "$SUMMARY"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/kernels" && cp -r "$RES"/. "$OUT/kernels/"
fi
