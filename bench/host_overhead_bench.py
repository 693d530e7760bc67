"""Host overhead of the public ``filter_stats_many`` for a 155-layer network (issue 11 item 4).

The layers have ResNet-152's count and conv ranks (bench/shapes.py) but tiny filters (``F = 2``,
``K = kh * kw``, 1..49 elements), so the CPU kernel's work is a few microseconds and the time of a
call is what the host does around it: argument checks, the layer table, boxing the tensors, the
output allocation. Measured on CPU tensors (the same host path as a CUDA call, minus the launch).

Rows, each the median of ``--rounds`` rounds of ``--calls`` back-to-back calls (microseconds per
call), all in one process, so their ratios are comparable:

* ``public_stacked``: ``filter_stats_many(weights, [G_l of shape [T, F, ...]])`` (the target of
  issue 11: <= 150 us);
* ``public_lists``:   ``filter_stats_many(weights, [[G_l,1 .. G_l,T]])``, as the pruning driver calls it;
* ``raw_stacked`` / ``raw_lists``: ``torch.ops.mtlkernels.filter_stats`` directly, the floor for the
  public call (no Python checks);
* ``public_noncontig``: one layer's gradients non-dense (a strided slice), which the public call
  copies on its checked path: the cost of leaving the fast path.

Usage: ``python bench/host_overhead_bench.py [--out bench/results/host_overhead_<machine>.json]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import shapes  # noqa: E402

import mtlkernels as mk  # noqa: E402
from benchutil import cpu_name, emit  # noqa: E402


def tiny_layers(num_tasks: int, filters: int = 2):
    """ResNet-152's 155 conv layers with F = ``filters`` and one input channel (K = kh * kw)."""
    gen = torch.Generator().manual_seed(0)
    ws, stacked = [], []
    for (_, _, kh, kw) in shapes.NETWORKS["resnet152"]():
        ws.append(torch.randn(filters, 1, kh, kw, generator=gen))
        stacked.append(torch.randn(num_tasks, filters, 1, kh, kw, generator=gen))
    return ws, stacked


def time_per_call(fn, calls: int, rounds: int) -> dict:
    fn()  # warm-up (first-call caches)
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        per_round.append((time.perf_counter() - t0) / calls * 1e6)
    return {"median_us": statistics.median(per_round), "min_us": min(per_round)}


def run(num_tasks: int, calls: int, rounds: int) -> dict:
    ws, stacked = tiny_layers(num_tasks)
    lists = [list(g.unbind(0)) for g in stacked]
    flat = [g for gl in lists for g in gl]
    noncontig = list(stacked)
    big = torch.randn(num_tasks, 2 * ws[3].shape[0], *ws[3].shape[1:])
    noncontig[3] = big[:, ::2]  # rows dense, but not at stride K: the public call copies it
    raw = torch.ops.mtlkernels.filter_stats
    cases = {  # name: (call, the gradients it computes on, in a form the public API takes)
        "public_stacked": (lambda: mk.filter_stats_many(ws, stacked, backend="cpu"), stacked),
        "public_lists": (lambda: mk.filter_stats_many(ws, lists, backend="cpu"), lists),
        "raw_stacked": (lambda: raw(ws, stacked), stacked),
        "raw_lists": (lambda: raw(ws, flat), lists),
        "public_noncontig": (lambda: mk.filter_stats_many(ws, noncontig, backend="cpu"), noncontig),
    }
    for name, (fn, grads) in cases.items():  # every row computes the right thing before it is timed
        out = fn()
        got = out.tensors() if hasattr(out, "tensors") else out
        want = mk.filter_stats_many(ws, grads, backend="reference").tensors()
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"{name} disagrees with the reference")
    cases = {name: fn for name, (fn, _) in cases.items()}
    return {name: time_per_call(fn, calls, rounds) for name, fn in cases.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (1: host cost only)")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(args.tasks, args.calls, args.rounds)
    result = {
        "machine": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "config": {"network": "resnet152 (155 convs, F=2, K=kh*kw)", "T": args.tasks,
                   "calls_per_round": args.calls, "rounds": args.rounds},
        "us_per_call": rows,
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
