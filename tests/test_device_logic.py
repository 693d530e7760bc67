"""Host runs of the index logic that the CUDA kernels share through common.h (no GPU needed).

``tests/cpp/warp_reduce_scatter.cpp`` simulates 4 warps of 32 lanes running the filter_stats
epilogue's warp reduce-scatter exactly as ``cuda_utils.cuh`` sequences it, and checks every
accumulator's block sum (small integer values: exact)."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = shutil.which("g++") or shutil.which("c++")


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_warp_reduce_scatter(tmp_path):
    exe = str(tmp_path / "warp_reduce_scatter")
    src = os.path.join(ROOT, "tests", "cpp", "warp_reduce_scatter.cpp")
    build = subprocess.run([CXX, "-std=c++17", "-O1", "-Wall", "-Werror", "-I", os.path.join(ROOT, "csrc", "include"),
                            src, "-o", exe], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(" ok") == 7, run.stdout
