"""How much do rankings change when per-task gradients are computed on every k-th step only?

``MultiTaskPruner(score_every=k)`` runs the T per-task backward passes on every k-th batch and a
plain backward of the summed loss on the others. The gradient it leaves for the optimizer is the same
either way, so the training trajectory does not depend on k, and the scores of ``score_every=k``
are exactly the mean over batches ``0, k, 2k, ...`` of the per-batch scores of ``score_every=1``. One
run with k=1 therefore measures every k: per k, the Spearman correlation of the group ranking with
k=1's, and the overlap of the lowest ``prune_amount`` groups (what the next prune event removes).

Setting: the demo study's model (``VGG16MTL(width=1/8)``, BN, procedural scenes at 64 px, batch 16),
trained ``--warmup`` steps first, then a prune interval of ``--interval`` steps; criteria taylor and
cosine; also the time of a scored step vs a plain step.

Run: ``python bench/score_every_bench.py [--out bench/results/score_every_<machine>.json]``;
``--smoke`` for the tests.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    import mtlkernels
    from mtlkernels.study import metrics as M
    from mtlkernels.study.data import build_dataset
    from mtlkernels.study.models import VGG16MTL
    from mtlkernels.pruning import MultiTaskPruner
from benchutil import cpu_name, emit  # noqa: E402

KS = (1, 2, 4, 8)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def run(criterion, ds, a, width, size):
    torch.manual_seed(0)
    model = VGG16MTL(tasks={"seg": ds.num_classes, "depth": 1, "normal": 3}, width=width,
                     head_channels=16, rates=[1, 2, 3]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(1)

    def batch():
        return ds.get(torch.randint(0, len(ds), (a.batch,), generator=g))

    for _ in range(a.warmup):
        b = batch()
        opt.zero_grad(set_to_none=True)
        sum(M.task_losses(model(b["image"]), b).values()).backward()
        opt.step()
    pr = MultiTaskPruner(model, ["seg", "depth", "normal"], criterion, example_inputs=batch()["image"][:2],
                         optimizer=opt, warn_unsupported=False)
    per_batch, t_scored = [], []
    for _ in range(a.interval):
        b = batch()
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        per_batch.append(pr.accumulate(M.task_losses(model(b["image"]), b)))
        t_scored.append(time.perf_counter() - t0)
        opt.step()
    b = batch()
    t0 = time.perf_counter()
    sum(M.task_losses(model(b["image"]), b).values()).backward()
    t_plain = time.perf_counter() - t0
    s = torch.stack(per_batch)
    full = s.mean(0)
    lowest = set(torch.argsort(full)[:a.prune_amount].tolist())
    out = {}
    for k in KS:
        sk = s[::k].mean(0)
        low_k = set(torch.argsort(sk)[:a.prune_amount].tolist())
        out[str(k)] = {"spearman_vs_k1": spearman(sk, full),
                       "lowest_overlap": len(lowest & low_k) / a.prune_amount,
                       "scored_batches": len(range(0, a.interval, k))}
    return out, sorted(t_scored)[len(t_scored) // 2], t_plain


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--interval", type=int, default=40)
    ap.add_argument("--prune-amount", type=int, default=25)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    width, size = (1 / 16, 32) if a.smoke else (1 / 8, 64)
    if a.smoke:
        a.warmup, a.interval, a.batch, a.prune_amount = 2, 8, 2, 5
    ds = build_dataset("procedural", "train", n=64 if a.smoke else 512, size=size, seed=0)
    res = {"machine": cpu_name(), "torch": torch.__version__, "mtlkernels": mtlkernels.__version__,
           "config": {"model": f"VGG16MTL(width={width})", "image_size": size, "batch": a.batch,
                      "warmup_steps": a.warmup, "interval": a.interval, "prune_amount": a.prune_amount},
           "criteria": {}}
    for crit in ("taylor", "cosine"):
        ks, t_scored, t_plain = run(crit, ds, a, width, size)
        res["criteria"][crit] = {"k": ks, "scored_step_ms": 1e3 * t_scored, "plain_backward_ms": 1e3 * t_plain}
    return emit(res, a.out)


if __name__ == "__main__":
    main()
