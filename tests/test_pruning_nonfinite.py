"""The pruner under NaN/Inf and extreme gradient scales (issue: faults and bad input): a NaN batch
costs only that batch's evidence, non-finite groups are never pruned and are reported, a detached
loss is named, and the criteria stay exact over the float32 range of gradients."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlkernels.ops import filter_stats_many
from mtlkernels.criteria import score
from mtlkernels.pruning import MultiTaskPruner

warnings.filterwarnings("ignore", category=RuntimeWarning)
TASKS = ["a", "b"]


pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.heads = nn.ModuleDict({t: nn.Conv2d(8, 2, 1) for t in TASKS})

    def forward(self, x):
        f = F.relu(self.c2(F.relu(self.bn(self.c1(x)))))
        return {t: h(f) for t, h in self.heads.items()}


def data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 6, 6, generator=g), {t: torch.randn(4, 2, 6, 6, generator=g) for t in TASKS})
            for _ in range(n)]


def losses(model, x, y, scale=1.0):
    out = model(x)
    return {t: F.mse_loss(out[t], y[t]) * scale for t in TASKS}


def make(criterion="taylor", **kw):
    torch.manual_seed(0)
    m = Net()
    return m, MultiTaskPruner(m, TASKS, criterion, example_inputs=torch.randn(2, 3, 6, 6), min_channels=1, **kw)


@pytest.mark.parametrize("ema", [None, 0.5])
def test_nan_batch_costs_only_that_batch(ema):
    kw = {} if ema is None else {"score_accumulation": ("ema", ema)}
    m, pr = make(**kw)
    batches = data(4)
    per = []
    for i, (x, y) in enumerate(batches):
        if i == 2:
            x = x.clone()
            x[0, 0, 0, 0] = math.nan                  # every statistic of this batch is NaN
        per.append(pr.accumulate(losses(m, x, y)))
        m.zero_grad()
    assert torch.isnan(per[2]).all()
    good = [per[i] for i in (0, 1, 3)]
    if ema is None:
        want = sum(good) / 3
    else:
        want = good[0]
        for s in good[1:]:
            want = ema * want + (1 - ema) * s
    torch.testing.assert_close(pr.scores(), want)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                # no warning: every group has evidence
        rep = pr.prune(4)
    assert rep.pruned == 4 and rep.nonfinite_groups == {}


def test_groups_without_finite_score_are_never_pruned_and_reported():
    m, pr = make()
    poison = pr.an.layers["c1"].out_groups[2].item()

    def nan_row(g):
        g = g.clone()
        g[2] = math.nan
        return g

    m.c1.weight.register_hook(nan_row)
    for x, y in data(3):
        pr.accumulate(losses(m, x, y))
        m.zero_grad()
    gs = pr.group_scores()
    assert gs[poison] == math.inf
    with pytest.warns(UserWarning) as record:
        rep = pr.prune(15)                            # all 16 groups but one may go, at most
    msgs = " | ".join(str(r.message) for r in record)
    assert "no finite score in the 3 batches" in msgs and "without the non-finite groups" in msgs
    assert rep.nonfinite_groups == {poison: 3}
    assert 2 not in rep.original_channels.get("c1", [])
    assert rep.pruned == 14                           # min_channels=1 keeps one of c2's 8


def test_detached_loss_is_named():
    m, pr = make()
    x, y = data(1)[0]
    ls = losses(m, x, y)
    ls["b"] = ls["b"].detach()
    with pytest.warns(UserWarning, match="task 'b' does not require grad"):
        pr.accumulate(ls)


@pytest.mark.parametrize("criterion", ["cosine", "taylor", "taylor_task_sum", "taylor_sq"])
@pytest.mark.parametrize("scale", [1e-20, 1e-7, 1e20])
def test_criteria_exact_over_float32_gradient_range(criterion, scale):
    """Scaling every loss by s scales the gradients by s: cosine must not move, the Taylor
    criteria must scale by s^2 (taylor_sq by s^2 too: W^2 G G) -- no NaN, no inf, no absolute
    epsilon (gradients ~1e20 overflowed the float32 Gram; ~2e-7 norms gave 0.055x the cosine)."""
    (x, y), = data(1)
    got = {}
    for s in (1.0, scale):
        m, pr = make(criterion)
        got[s] = pr.accumulate(losses(m, x, y, scale=s))
    assert torch.isfinite(got[scale]).all()
    expect = got[1.0] if criterion == "cosine" else got[1.0] * scale ** 2
    torch.testing.assert_close(got[scale], expect, rtol=1e-4, atol=1e-6 * float(expect.abs().max()))


def test_cosine_has_no_absolute_epsilon():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(6, 10, generator=g)
    grads = torch.randn(3, 6, 10, generator=g)
    ref = score(filter_stats_many([w], [grads]), "cosine")
    for s in (2e-7, 2e-8):   # per-filter norms of ~1e-6 and below
        torch.testing.assert_close(score(filter_stats_many([w], [grads * s]), "cosine"), ref, rtol=1e-5, atol=1e-6)
