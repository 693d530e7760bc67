"""Host runs of the index logic that the CUDA kernels share through common.h (no GPU needed).

- ``tests/cpp/warp_reduce_scatter.cpp`` simulates 4 warps of 32 lanes running the filter_stats
  epilogue's warp reduce-scatter exactly as ``cuda_utils.cuh`` sequences it, and checks every
  accumulator's block sum (small integer values: exact).
- ``tests/cpp/task_tiles.cpp`` runs the CUDA filter_stats path for T = 9..16 (common.h TaskTiles:
  task tiles split across 5 warps) on simulated lanes: every accumulator has one owner, every
  output is written and exact for T = 9..16.
- ``tests/cpp/filter_stats_chunks.cpp`` checks the CUDA filter_stats launch in chunks of whole
  layers (the table is a kernel parameter of bounded size): every row read through its chunk's
  table and output pointers is the row the whole table gives.
- ``tests/cpp/contrib_positions.cpp`` checks channel_contrib's position walks: the cursor that
  replaces an int64 division per element (channels_last), and the warp-per-row split of short
  NCHW rows (every position to exactly one thread).
- ``tests/cpp/gather_index.cpp`` checks the gather kernel's multiply-high divisions (FastDivU31)
  against ``/`` and its per-element input offsets against the row math the CPU kernel uses.
"""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = shutil.which("g++") or shutil.which("c++")


def _build_and_run(name, tmp_path):
    exe = str(tmp_path / name)
    src = os.path.join(ROOT, "tests", "cpp", name + ".cpp")
    build = subprocess.run([CXX, "-std=c++17", "-O1", "-Wall", "-Werror", "-I", os.path.join(ROOT, "csrc", "include"),
                            src, "-o", exe], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([exe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_warp_reduce_scatter(tmp_path):
    assert _build_and_run("warp_reduce_scatter", tmp_path).count(" ok") == 7


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_gather_fast_index(tmp_path):
    out = _build_and_run("gather_index", tmp_path)
    assert "FastDivU31 ok" in out and "gather_in_elem_u31 ok" in out, out


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_task_tiles(tmp_path):
    out = _build_and_run("task_tiles", tmp_path)
    assert "ownership ok" in out and "rows ok" in out, out


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_filter_stats_chunks(tmp_path):
    assert "chunks ok" in _build_and_run("filter_stats_chunks", tmp_path)


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_contrib_positions(tmp_path):
    assert "positions ok" in _build_and_run("contrib_positions", tmp_path)
