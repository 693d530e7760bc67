"""Small GPU probes for bench/gpu_check.sh (issue 11 items 2 and 11).

* ``race``: one filter_stats call at T=3 (register path), one at T=16 (the shared-memory task-tile
  path) and one gather, then a sync: short enough to run under ``compute-sanitizer --tool
  racecheck``, which checks the shared-memory accesses of every block.
* ``local_mem``: free device memory (``cudaMemGetInfo``) right before and after the FIRST T=16
  launch of the process. A kernel with a stack frame makes the driver reserve stack x resident
  threads of local memory at its first launch (the old T=16 path: ~1 GB); the tile path has none
  (ptxas), so the drop should be the outputs and the table only. Exits 1 when the drop exceeds
  ``--max-mb`` beyond the outputs.

Usage: ``python bench/gpu_probes.py race|local_mem [--device cuda]`` (``--device cpu`` runs the
same calls on the C++ backend: a check of the script, nothing measured).
"""
from __future__ import annotations

import argparse
import sys

import torch

import mtlkernels as mk


def _layers(T, device, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 3, 7, 7), (256, 64, 1, 1), (128, 128, 3, 3), (1000, 37)]
    ws = [torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in shapes]
    gs = [torch.randn((T,) + s, generator=gen).to(device=device, dtype=dtype) for s in shapes]
    return ws, gs


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def race(device) -> int:
    for T in (3, 16):
        ws, gs = _layers(T, device, torch.bfloat16)
        mk.filter_stats_many(ws, gs)
    x = torch.randn(96, 64, 3, 3, device=device)
    mk.gather_channels(x, torch.arange(0, 96, 2, device=device), torch.arange(1, 64, 3, device=device),
                       check_indices=False)  # only our kernel under racecheck, no unique/min/max
    _sync(device)
    print("race probe: filter_stats T=3, T=16 and one gather ran")
    return 0


def local_mem(device, max_mb: float) -> int:
    ws, gs = _layers(16, device, torch.bfloat16)
    _sync(device)
    free0 = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
    stats = mk.filter_stats_many(ws, gs)
    _sync(device)
    free1 = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
    outputs = sum(t.numel() * t.element_size() for t in stats.tensors())
    drop_mb = (free0 - free1) / 2**20
    extra_mb = drop_mb - outputs / 2**20
    print(f"local_mem probe: free memory dropped {drop_mb:.1f} MiB at the first T=16 launch "
          f"({outputs / 2**20:.1f} MiB of outputs; {extra_mb:.1f} MiB beyond them; limit {max_mb} MiB)")
    return 0 if extra_mb <= max_mb else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("probe", choices=["race", "local_mem"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--max-mb", type=float, default=64.0,
                    help="allowed drop beyond the outputs (the caching allocator's first segment "
                         "for the table and outputs rounds up; a stack reservation is ~1 GB)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.probe == "race":
        return race(device)
    return local_mem(device, args.max_mb)


if __name__ == "__main__":
    sys.exit(main())
