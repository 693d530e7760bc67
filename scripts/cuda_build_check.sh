#!/usr/bin/env bash
# Build the CUDA flavour of mtlkernels._C on a machine WITHOUT a GPU or a CUDA torch, against the
# headers and libraries of a real CUDA torch wheel, and link it with every symbol resolved.
#
# Catches what the CI checks (nvcc per .cu, a syntax-only parse of the bindings against the CPU
# wheel's headers) cannot: the generated CUDA headers of a CUDA wheel, torch's own nvcc flags,
# and missing symbols in libc10_cuda / libtorch_cuda. It downloads that wheel (about 530 MB) once,
# so it is a developer's check, not part of the test command.
#
#   bash scripts/cuda_build_check.sh            # torch 2.11.0 (+cu130: the GPU machines' torch)
#   MTL_CUDA_TORCH=2.12.0 bash scripts/cuda_build_check.sh
#
# Needs: nvcc (CUDA 13 for a cu130 wheel), g++, pip, network to PyPI. Writes under
# ${MTL_CACHE:-~/.cache/mtlkernels} and build/cuda_check/.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VER=${MTL_CUDA_TORCH:-2.11.0}
CACHE=${MTL_CACHE:-$HOME/.cache/mtlkernels}/torch-$VER-cuda
OUTD=$ROOT/build/cuda_check
NVCC=$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")
CUDA=
for c in "${CUDA_HOME:-}" "$(dirname "$(readlink -f "$NVCC")")/.." /usr/local/cuda /usr/local/cuda-*; do
  if [ -n "$c" ] && [ -f "$c/include/cuda_runtime.h" ]; then CUDA=$(cd "$c" && pwd); break; fi
done
[ -n "$CUDA" ] || { echo "[cuda-check] no CUDA toolkit with include/cuda_runtime.h found"; exit 1; }
PY=${PYTHON:-python3}
mkdir -p "$CACHE" "$OUTD"
if [ ! -f "$CACHE/torch/version.py" ]; then
  echo "[cuda-check] downloading torch==$VER (the CUDA wheel from PyPI, no dependencies)"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d "$CACHE" "torch==$VER"
  (cd "$CACHE" && unzip -q -o torch-"$VER"-*.whl 'torch/include/*' 'torch/lib/*' 'torch/version.py' \
     'torch/utils/cpp_extension.py' && rm -f torch-"$VER"-*.whl)
fi
TI=$CACHE/torch/include
TL=$CACHE/torch/lib
TORCH_CUDA=$(sed -n "s/^cuda: Optional\[str\] = '\(.*\)'/\1/p" "$CACHE/torch/version.py")
[ -n "$TORCH_CUDA" ] || { echo "[cuda-check] torch==$VER from PyPI is not a CUDA build"; exit 1; }
echo "[cuda-check] torch $VER (CUDA $TORCH_CUDA), $("$NVCC" --version | tail -1)"
# torch's own nvcc flags for extensions (-D__CUDA_NO_HALF_OPERATORS__ ...), read from that wheel
NVFLAGS=$("$PY" - "$CACHE/torch/utils/cpp_extension.py" <<'PYEOF'
import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
for node in tree.body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMMON_NVCC_FLAGS":
        print(" ".join(ast.literal_eval(node.value)))
PYEOF
)
PYINC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
PYLIB=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))")
PYVER=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('LDVERSION'))")
INC=(-I"$ROOT/csrc/include" -I"$TI" -I"$TI/torch/csrc/api/include" -I"$CUDA/include" -I"$PYINC")
DEFS=(-DMTL_WITH_CUDA -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H -D_GLIBCXX_USE_CXX11_ABI=1)
rm -f "$OUTD"/*.o "$OUTD"/_C.so
pids=()
for src in csrc/mtlkernels.cpp csrc/common/tables.cpp csrc/*/cpu/*.cpp csrc/*/cuda/*.cpp; do
  g++ -std=c++17 -O3 -march=native -fPIC -fopenmp "${DEFS[@]}" "${INC[@]}" -c "$src" -o "$OUTD/$(basename "$src").o" &
  pids+=($!)
done
for src in csrc/*/cuda/*.cu; do
  # shellcheck disable=SC2086
  "$NVCC" -std=c++17 -O3 $NVFLAGS -lineinfo -gencode=arch=compute_90,code=sm_90 -Xcompiler -fPIC \
    "${DEFS[@]}" "${INC[@]}" -c "$src" -o "$OUTD/$(basename "$src").o" &
  pids+=($!)
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
[ $fail = 0 ] || { echo "[cuda-check] COMPILE FAILED"; exit 1; }
g++ -shared -fopenmp "$OUTD"/*.o -o "$OUTD/_C.so" \
  -L"$TL" -lc10 -lc10_cuda -ltorch -ltorch_cpu -ltorch_cuda -ltorch_python \
  -L"$CUDA/lib64" -lcudart -L"$PYLIB" -lpython"$PYVER" \
  -Wl,--no-undefined -Wl,--allow-shlib-undefined \
  || { echo "[cuda-check] LINK FAILED (a symbol the bindings use is missing from torch $VER)"; exit 1; }
echo "[cuda-check] OK: $(ls "$OUTD"/*.o | wc -l) objects compiled (.cu for sm_90 with torch's nvcc flags)" \
     "and linked into build/cuda_check/_C.so against torch $VER+cu${TORCH_CUDA/./}, no undefined symbols"
