#!/usr/bin/env bash
# The test command (README; .ci/run calls it): set up if needed, then the whole test suite,
# including the nvcc compile check of every .cu file (tests/test_cuda_compile.py) and the Triton
# kernels under TRITON_INTERPRET=1 on CPU. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec python -m pytest tests -q -p no:cacheprovider "$@"
