#!/usr/bin/env bash
# Every GPU check, for a session that is lent a GPU, in one device call. Run it with the device tool
# from the repo root (timeout_s 600): it uses the machine's own python3/torch/triton, builds against
# that torch, and writes logs and results under $OUT. In order of importance, within BUDGET seconds
# (default 570; the steps after 4 get only the time left, and say so when cut):
#     1. build mtlkernels._C with CUDA (sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise),
#     2. the kernel tests on CUDA tensors (cuda and triton backends),
#     3. the CUDA tests once under compute-sanitizer memcheck; racecheck on one filter_stats call of
#        each path (T=3 registers, T=16 shared-memory task tiles) and one gather
#        (bench/gpu_probes.py race); free device memory before/after the first T=16 launch of a
#        process (bench/gpu_probes.py local_mem: a stack frame would reserve ~1 GB there),
#     4. bench/gpu_bench.py (kernels, op-only, eager reference, gathers) -> $OUT/gpu_bench.json,
#     5. torch.compile(reference) rows -> $OUT/gpu_bench_compile.json,
#     6. the whole test suite.
# PHASE=core runs 1-4 only; PHASE=extra runs 5-6 only (a second call for what the first had no
# time for; it rebuilds first if the machine is a fresh one).
#
# Then copy $OUT/gpu_bench*.json to bench/results/ and update the README's GPU table.
# Before any of this, scripts/cuda_build_check.sh builds and links the CUDA flavour here (no GPU).
set -uo pipefail
OUT=${OUT:-/tmp/mtl_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-python3}
PHASE=${PHASE:-all}
BUDGET=${BUDGET:-570}
t0=$(date +%s)
since() { echo "$(( $(date +%s) - t0 )) s"; }
left() { echo $(( BUDGET - ($(date +%s) - t0) )); }

build() {
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
  if ! $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
    tail -60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
  fi
  echo "build: $(since)"; grep "mtlkernels build" "$OUT/build.log"
}

case "$PHASE" in core|extra|all) ;; *) echo "PHASE must be all, core or extra"; exit 2 ;; esac
if [ "$PHASE" != extra ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
  build
  $PY -c "from mtlkernels import _backend; print('backends on cuda:', _backend.available_backends('cuda'))"
  $PY -m pytest tests/test_ops.py tests/test_triton.py tests/test_device_logic.py -q -p no:cacheprovider \
    -p no:logging -x 2>&1 | tee "$OUT/pytest_kernels.log" | tail -15
  echo "kernel tests: $(since)"
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest tests/test_ops.py -q \
    -p no:cacheprovider -p no:logging -k "cuda-cuda and (filter_stats_many or channel_contrib or gather_many)" -x \
    2>&1 | tail -8 | tee "$OUT/memcheck.log"
  echo "memcheck exit: ${PIPESTATUS[0]} ($(since))"
  timeout 120 compute-sanitizer --tool racecheck --error-exitcode 9 $PY bench/gpu_probes.py race \
    2>&1 | tail -6 | tee "$OUT/racecheck.log"
  echo "racecheck exit: ${PIPESTATUS[0]} ($(since))"
  timeout 60 $PY bench/gpu_probes.py local_mem 2>&1 | tee "$OUT/local_mem.log"
  echo "local_mem exit: ${PIPESTATUS[0]} (1 = more than the limit reserved at the first T=16 launch) ($(since))"
  $PY bench/gpu_bench.py --out "$OUT/gpu_bench.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -32
  echo "bench: $(since)"
fi
if [ "$PHASE" != core ]; then
  $PY -c "import mtlkernels._C, torch; assert torch.ops.mtlkernels._built_with_cuda()" 2>/dev/null || build
  if [ "$(left)" -gt 90 ]; then
    timeout "$(( $(left) - 60 ))" $PY bench/gpu_bench.py --compile-only --out "$OUT/gpu_bench_compile.json" 2>&1 \
      | tee "$OUT/bench_compile.log" | tail -12
    echo "compile bench exit: ${PIPESTATUS[0]} (124 = cut by the budget) ($(since))"
  else
    echo "compile bench: SKIPPED, $(left) s left (run PHASE=extra in another call)"
  fi
  if [ "$(left)" -gt 30 ]; then
    timeout "$(( $(left) - 10 ))" $PY -m pytest tests -q -p no:cacheprovider -p no:logging 2>&1 | tail -8 \
      | tee "$OUT/pytest_all.log"
    echo "whole suite exit: ${PIPESTATUS[0]} (124 = cut by the budget) ($(since))"
  else
    echo "whole suite: SKIPPED, $(left) s left (run PHASE=extra in another call)"
  fi
fi
