"""Per-step cost of the pruning driver on the study model: group scoring vs per-filter scoring.

One ``accumulate`` (T per-task backward passes + statistics + criterion) and one ``optimizer.step``
per step, on the demo study's model (``VGG16MTL(width=1/8)``, BN, 64 px, batch 16, T=3). The
providers run interleaved in one process (round-robin, best-of and median over rounds) so that the
ratio is not a comparison of two processes on a shared machine:

* ``plain``: forward + one backward of the summed loss + step (what training costs without pruning);
* ``filter``: ``scope="filter"``, the per-filter criterion of the authors' code (before group
  scoring, the only mode);
* ``group``: ``scope="group"`` (default): all member rows of all groups, summed per group.

Also the statistics alone (the filter_stats_many call of each scope, no backward).

Run: ``python bench/pruner_step_bench.py [--rounds 15] [--out bench/results/pruner_step_<machine>.json]``.
``--smoke`` runs a tiny configuration (the tests run it).
"""
from __future__ import annotations

import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    import mtlkernels
    from mtlkernels.study.models import VGG16MTL
    from mtlkernels.pruning import MultiTaskPruner
from benchutil import cpu_name, emit, timing_args  # noqa: E402

TASKS = {"seg": 7, "depth": 1, "normal": 3}


def make_model(width, seed=0):
    torch.manual_seed(seed)
    return VGG16MTL(tasks=TASKS, width=width, head_channels=16, rates=[1, 2, 3]).train()


def losses(model, x, ys):
    out = model(x)
    return {t: F.mse_loss(out[t], ys[t]) for t in TASKS}


def provider(name, width, x, ys):
    model = make_model(width)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    if name == "plain":
        def step():
            opt.zero_grad(set_to_none=True)
            sum(losses(model, x, ys).values()).backward()
            opt.step()
        return step, None
    pr = MultiTaskPruner(model, list(TASKS), "taylor", example_inputs=x[:2], optimizer=opt, scope=name,
                         warn_unsupported=False)

    def step():
        opt.zero_grad(set_to_none=True)
        pr.accumulate(losses(model, x, ys))
        opt.step()

    params = [p for p in model.parameters() if p.requires_grad]
    g = [[torch.randn_like(p) for p in params] for _ in TASKS]
    index = {id(p): j for j, p in enumerate(params)}

    def stats_only():
        pr._scorer.batch_scores(lambda w: [gt[index[id(w)]] for gt in g])
    return step, stats_only


def measure(fns, rounds, reps):
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            times[k].append((time.perf_counter() - t0) / reps)
    return {k: {"median_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v)} for k, v in times.items()}


def main(argv=None):
    a = timing_args(__doc__, rounds=15).parse_args(argv)
    torch.set_num_threads(a.threads)
    width, size, batch = (1 / 16, 16, 2) if a.smoke else (1 / 8, 64, 16)
    rounds = 2 if a.smoke else a.rounds
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    with torch.no_grad():
        shapes = {t: o.shape for t, o in make_model(width)(x).items()}
    ys = {t: torch.randn(s, generator=g) for t, s in shapes.items()}
    steps, stats = {}, {}
    for name in ("plain", "filter", "group"):
        steps[name], s = provider(name, width, x, ys)
        if s is not None:
            stats[name] = s
    for fn in list(steps.values()) + list(stats.values()):
        fn()  # warm-up
    step_t = measure(steps, rounds, 1)
    stats_t = measure(stats, rounds, 5)
    res = {
        "machine": cpu_name(), "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__, "mtlkernels": mtlkernels.__version__,
        "backends": mtlkernels.available_backends("cpu"), "threads": a.threads,
        "config": {"model": f"VGG16MTL(width={width})", "image_size": size, "batch": batch, "T": len(TASKS),
                   "rounds": rounds},
        "step": step_t, "statistics": stats_t,
        "ratios": {
            "step_group_over_filter": step_t["group"]["median_ms"] / step_t["filter"]["median_ms"],
            "step_group_over_plain": step_t["group"]["median_ms"] / step_t["plain"]["median_ms"],
            "statistics_group_over_filter": stats_t["group"]["median_ms"] / stats_t["filter"]["median_ms"],
        },
    }
    return emit(res, a.out)


if __name__ == "__main__":
    main()
