"""Scores of the pruning driver against independent computations: ``scope="filter"`` against the
paper's code (per-task gradients by separate backward passes, cosine per conv filter and task pair
with torch.nn.functional.cosine_similarity, averaged over the pairs and the batches); the default
``scope="group"`` against the group's summed parameters (tests/test_gate_taylor.py checks it against
gate Taylor on activations)."""
from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlkernels.pruning import MultiTaskPruner

warnings.filterwarnings("ignore", category=RuntimeWarning)

TASKS = ["a", "b", "c"]


pytestmark = pytest.mark.usefixtures("one_thread")


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 7, 3, padding=1)
        self.heads = nn.ModuleDict({t: nn.Sequential(nn.Conv2d(7, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
                                    for t in TASKS})

    def forward(self, x):
        f = torch.relu(self.c2(torch.relu(self.bn1(self.c1(x)))))
        return {t: h(f) for t, h in self.heads.items()}


def batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 6, 6, generator=g), {t: torch.randn(4, 2, 6, 6, generator=g) for t in TASKS})
            for _ in range(n)]


def losses_of(model, x, y):
    out = model(x)
    return {t: F.mse_loss(out[t], y[t]) for t in TASKS}


def paper_cosine(model, data, layers):
    """Mean over batches of the mean over task pairs of the per-filter gradient cosine."""
    mods = dict(model.named_modules())
    acc = {l: torch.zeros(mods[l].weight.shape[0], dtype=torch.float64) for l in layers}
    for x, y in data:
        ls = losses_of(model, x, y)
        grads = {}
        for t in TASKS:
            model.zero_grad()
            ls[t].backward(retain_graph=True)
            grads[t] = {l: torch.zeros_like(mods[l].weight) if mods[l].weight.grad is None
                        else mods[l].weight.grad.detach().clone() for l in layers}
        for l in layers:
            cos = []
            for i, j in itertools.combinations(TASKS, 2):
                gi = grads[i][l].flatten(1)
                gj = grads[j][l].flatten(1)
                cos.append(F.cosine_similarity(gi, gj, dim=1))
            acc[l] += torch.stack(cos).mean(0).double()
    return {l: v / len(data) for l, v in acc.items()}


def rows_by_layer(pr, scores):
    """Per-filter scores (scope="filter") split by layer."""
    out, k = {}, 0
    for m in pr._scorer.members:
        n = m.groups.numel()
        out[m.layer] = scores[k:k + n]
        k += n
    return out


@pytest.mark.parametrize("grad_mode", ["loop", "batched"])
def test_cosine_matches_paper_code(grad_mode):
    torch.manual_seed(0)
    model = Small()
    ref_model = copy.deepcopy(model)
    data = batches()
    pr = MultiTaskPruner(model, TASKS, "cosine", example_inputs=data[0][0], grad_mode=grad_mode, min_channels=1,
                         scope="filter")
    for x, y in data:
        model.zero_grad()
        pr.accumulate(losses_of(model, x, y))
    got = rows_by_layer(pr, pr.scores())
    layers = ["c1", "c2", "heads.a.0", "heads.b.0", "heads.c.0"]
    assert set(layers) <= set(got)
    want = paper_cosine(ref_model, data, layers)
    for l in layers:
        torch.testing.assert_close(got[l], want[l], rtol=1e-4, atol=1e-5)
    # head filters see only their task: cosine 0 for every pair involving other tasks
    assert got["heads.a.0"].abs().max() < 1e-6
    # one score per group: the sum of its member filters (no coupling here: the filter's score)
    gs = pr.group_scores()
    for l in ["c1", "c2"]:
        og = pr.an.layers[l].out_groups
        torch.testing.assert_close(gs[og], want[l], rtol=1e-4, atol=1e-5)
    # the lowest-scoring groups are pruned first
    sel = pr.select(3)
    assert sorted(gs[sel].tolist()) == sorted(gs.sort().values[:3].tolist())


def test_grad_is_weighted_task_sum():
    torch.manual_seed(1)
    model = Small()
    ref = copy.deepcopy(model)
    (x, y), = batches(1)
    w = {"a": 1.0, "b": 0.5, "c": 2.0}
    pr = MultiTaskPruner(model, TASKS, "taylor", example_inputs=x, task_weights=w)
    pr.accumulate(losses_of(model, x, y))
    ls = losses_of(ref, x, y)
    sum(w[t] * ls[t] for t in TASKS).backward()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)


def test_taylor_and_ema():
    torch.manual_seed(2)
    model = Small()
    data = batches(2)
    pr = MultiTaskPruner(model, TASKS, "taylor", example_inputs=data[0][0], score_accumulation=("ema", 0.75))
    per_batch = []
    for x, y in data:
        model.zero_grad()
        per_batch.append(pr.accumulate(losses_of(model, x, y)))
    torch.testing.assert_close(pr.scores(), 0.75 * per_batch[0] + 0.25 * per_batch[1])
    # taylor = (sum over the group's parameters of w . dL/dw)^2, by hand for the groups of c1
    # (c1's weight rows and bias, bn1's gamma and beta) on the last batch
    x, y = data[1]
    ls = losses_of(model, x, y)
    ps = [model.c1.weight, model.c1.bias, model.bn1.weight, model.bn1.bias]
    gs = torch.autograd.grad(sum(ls.values()), ps)
    dot = sum((p * g).reshape(p.shape[0], -1).sum(1) for p, g in zip(ps, gs))
    og = pr.an.layers["c1"].out_groups
    torch.testing.assert_close(per_batch[1][og], (dot ** 2).double(), rtol=1e-4, atol=1e-12)


def test_bn_scale_and_weight_criteria():
    torch.manual_seed(3)
    model = Small()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([0.5, -0.1, 2.0, 0.05, 1.0, -3.0]))
    pr = MultiTaskPruner(model, TASKS, "bn_scale", example_inputs=x, min_channels=1)
    gs = pr.group_scores()
    og = pr.an.layers["c1"].out_groups
    torch.testing.assert_close(gs[og], torch.tensor([0.5, 0.1, 2.0, 0.05, 1.0, 3.0], dtype=torch.float64))
    rep = pr.prune(2)
    assert rep.original_channels["c1"] == [1, 3] and rep.original_channels["bn1"] == [1, 3]
    # gradient criteria refuse to prune without accumulated gradients
    pr2 = MultiTaskPruner(Small(), TASKS, "cosine", example_inputs=x)
    with pytest.raises(RuntimeError, match="accumulate"):
        pr2.prune(1)


def test_score_every_scores_every_kth_batch_and_keeps_the_gradient():
    """score_every=2: per-task gradients on batches 0 and 2 only; the scores are the mean of
    those batches' scores, and p.grad is the weighted task sum on every batch, as with k=1."""
    torch.manual_seed(4)
    data = batches(4)
    models = {k: Small() for k in (1, 2)}
    models[2].load_state_dict(models[1].state_dict())
    prs = {k: MultiTaskPruner(m, TASKS, "cosine", example_inputs=data[0][0], score_every=k)
           for k, m in models.items()}
    per = {1: [], 2: []}
    for x, y in data:
        for k, m in models.items():
            m.zero_grad()
            per[k].append(prs[k].accumulate(losses_of(m, x, y)))
        for p, q in zip(models[1].parameters(), models[2].parameters()):
            torch.testing.assert_close(p.grad, q.grad)
    assert [s.numel() > 0 for s in per[2]] == [True, False, True, False]
    torch.testing.assert_close(prs[2].scores(), (per[1][0] + per[1][2]) / 2)
    with pytest.raises(ValueError, match="score_every"):
        MultiTaskPruner(Small(), TASKS, "cosine", example_inputs=data[0][0], score_every=0)
