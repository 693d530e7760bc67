#!/usr/bin/env bash
# Every GPU check, for a session that is lent a GPU. Run it with the device tool from the repo root:
# it uses the machine's own python3/torch/triton, builds against that torch, and writes logs and
# results under $OUT. Two phases, each sized to fit one device call (<= 10 minutes) of a 15-minute
# budget that includes the machine's start:
#
#   bash bench/gpu_check.sh          (timeout_s ~560) phase "core":
#     1. build mtlkernels._C with CUDA (sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise),
#     2. the kernel tests on CUDA tensors (cuda and triton backends),
#     3. the CUDA tests once under compute-sanitizer memcheck,
#     4. bench/gpu_bench.py (kernels, op-only, eager reference, gathers) -> $OUT/gpu_bench.json
#   PHASE=extra bash bench/gpu_check.sh   (right after, on the still-warm machine; it rebuilds
#                                          if the machine is a fresh one)
#     5. torch.compile(reference) rows -> $OUT/gpu_bench_compile.json,
#     6. the whole test suite for the time left (FULL_SUITE seconds, default 200).
#
# Then copy $OUT/gpu_bench*.json to bench/results/ and update the README's GPU table.
# Before any of this, scripts/cuda_build_check.sh builds and links the CUDA flavour here (no GPU).
set -uo pipefail
OUT=${OUT:-/tmp/mtl_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-python3}
PHASE=${PHASE:-core}
t0=$(date +%s)
since() { echo "$(( $(date +%s) - t0 )) s"; }

build() {
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
  if ! $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
    tail -60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
  fi
  echo "build: $(since)"; grep "mtlkernels build" "$OUT/build.log"
}

if [ "$PHASE" = core ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
  build
  $PY -c "from mtlkernels import _backend; print('backends on cuda:', _backend.available_backends('cuda'))"
  $PY -m pytest tests/test_ops.py tests/test_triton.py tests/test_device_logic.py -q -p no:cacheprovider \
    -p no:logging -x 2>&1 | tee "$OUT/pytest_kernels.log" | tail -15
  echo "kernel tests: $(since)"
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest tests/test_ops.py -q \
    -p no:cacheprovider -p no:logging -k "cuda-cuda and (filter_stats_many or channel_contrib or gather_many)" -x \
    2>&1 | tail -8 | tee "$OUT/memcheck.log"
  echo "memcheck exit: ${PIPESTATUS[0]} ($(since))"
  $PY bench/gpu_bench.py --out "$OUT/gpu_bench.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -32
  echo "bench: $(since)"
elif [ "$PHASE" = extra ]; then
  $PY -c "import mtlkernels._C, torch; assert torch.ops.mtlkernels._built_with_cuda()" 2>/dev/null || build
  timeout 300 $PY bench/gpu_bench.py --compile-only --out "$OUT/gpu_bench_compile.json" 2>&1 \
    | tee "$OUT/bench_compile.log" | tail -12
  echo "compile bench: $(since)"
  timeout "${FULL_SUITE:-200}" $PY -m pytest tests -q -p no:cacheprovider -p no:logging 2>&1 | tail -8 \
    | tee "$OUT/pytest_all.log"
  echo "suite: $(since)"
else
  echo "PHASE must be core or extra"; exit 2
fi
