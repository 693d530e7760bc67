#!/usr/bin/env bash
# Every GPU check in one go, for a session that is lent a GPU (device tool: run it from the repo
# root; it uses the machine's own python3/torch/triton, builds against that torch, and writes logs
# and results under $OUT):
#   1. build mtlkernels._C with CUDA (sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise),
#   2. the kernel tests on CUDA tensors (cuda and triton backends),
#   3. the CUDA tests once under compute-sanitizer memcheck,
#   4. the benchmarks (bench/gpu_bench.py) -> $OUT/gpu_bench.json,
#   5. the rest of the test suite, as time allows.
set -uo pipefail
OUT=${OUT:-/tmp/mtl_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
t0=$(date +%s)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
if ! $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "build: $(( $(date +%s) - t0 )) s"; grep "mtlkernels build" "$OUT/build.log"
$PY -c "import mtlkernels, torch; from mtlkernels import _backend; print('backends on cuda:', _backend.available_backends('cuda'))"
$PY -m pytest tests/test_ops.py tests/test_triton.py -q -p no:cacheprovider -p no:logging -x 2>&1 | tee "$OUT/pytest_kernels.log" | tail -15
echo "kernel tests: $(( $(date +%s) - t0 )) s"
timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest tests/test_ops.py -q -p no:cacheprovider -p no:logging \
  -k "cuda-cuda and (filter_stats_many or channel_contrib or gather_many)" -x 2>&1 | tail -8 | tee "$OUT/memcheck.log"
echo "memcheck exit: ${PIPESTATUS[0]}  ($(( $(date +%s) - t0 )) s)"
$PY bench/gpu_bench.py --out "$OUT/gpu_bench.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -25
echo "bench: $(( $(date +%s) - t0 )) s"
if [ -n "${FULL_SUITE:-}" ]; then
  timeout "${FULL_SUITE}" $PY -m pytest tests -q -p no:cacheprovider -p no:logging 2>&1 | tail -8 | tee "$OUT/pytest_all.log"
fi
