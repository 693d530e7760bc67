"""The driver's group ``taylor`` is gate Taylor (Molchanov et al. 2019), checked on activations.

Oracle: forward hooks keep every member layer's output ``a`` and its gradient; ``channel_contrib``
gives ``sum a dL/da`` per channel, summed over the members of each channel group. Two oracles:

* *exact*: over the output of every parameterised member (convs AND the norms after them). By the
  chain rule this is exactly ``sum over the group's parameters of w dL/dw``, whatever the network.
* *gate*: over each channel's post-norm activation only (a conv's output where no norm follows) --
  the paper's gate Taylor. It differs from the exact one by the pre-norm terms, which a train-mode
  BatchNorm makes ``eps / (var + eps)`` times its own (the scale invariance of BN).

Models: a BN ResNet (coupled residual groups), a VGG with biases and no BN, a depthwise block and an
ASPP concatenation; per batch, and ``prune(n)`` removes the n lowest groups by the oracle.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mtlkernels as mk
from mtlkernels.pruning import MultiTaskPruner

warnings.filterwarnings("ignore", category=RuntimeWarning)
TASKS = ["a", "b", "c"]
LAM = [1.0, 0.5, 2.0]


pytestmark = pytest.mark.usefixtures("one_thread")


def cbr(i, o, k=3, s=1, d=1, groups=1):
    return nn.Sequential(nn.Conv2d(i, o, k, s, d * (k // 2), dilation=d, groups=groups, bias=False),
                         nn.BatchNorm2d(o), nn.ReLU())


class Heads(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h = nn.ModuleDict({t: nn.Sequential(nn.Conv2d(c, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 2, 1))
                                for t in TASKS})

    def forward(self, f):
        return {t: h(f) for t, h in self.h.items()}


class ResBN(nn.Module):
    def __init__(self, c=6):
        super().__init__()
        self.stem = cbr(3, c)
        self.b1 = nn.Sequential(cbr(c, c), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.b2 = nn.Sequential(cbr(c, 2 * c, s=2), nn.Conv2d(2 * c, 2 * c, 3, padding=1, bias=False),
                                nn.BatchNorm2d(2 * c))
        self.down = nn.Sequential(nn.Conv2d(c, 2 * c, 1, 2, bias=False), nn.BatchNorm2d(2 * c))
        self.heads = Heads(2 * c)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.b1(x))
        x = F.relu(self.down(x) + self.b2(x))
        return self.heads(x)


class VGGBias(nn.Module):
    def __init__(self, c=6):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                               nn.MaxPool2d(2), nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.heads = Heads(2 * c)

    def forward(self, x):
        return self.heads(self.f(x))


class Depthwise(nn.Module):
    def __init__(self, c=6):
        super().__init__()
        self.f = nn.Sequential(cbr(3, c), cbr(c, 2 * c, k=1), cbr(2 * c, 2 * c, groups=2 * c), cbr(2 * c, c, k=1))
        self.heads = Heads(c)

    def forward(self, x):
        return self.heads(self.f(x))


class ASPP(nn.Module):
    def __init__(self, c=6):
        super().__init__()
        self.stem = cbr(3, c)
        self.branches = nn.ModuleList([cbr(c, 4, d=d) for d in (1, 2, 3)])
        self.proj = nn.Conv2d(12, c, 1)
        self.heads = Heads(c)

    def forward(self, x):
        x = self.stem(x)
        return self.heads(F.relu(self.proj(torch.cat([b(x) for b in self.branches], 1))))


MODELS = {"resnet_bn": ResBN, "vgg_bias": VGGBias, "depthwise": Depthwise, "aspp": ASPP}


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 12, 12, generator=g)
    return x, g


def losses(out, g):
    return {t: ((o - torch.randn(o.shape, generator=g)) ** 2).mean() for t, o in out.items()}


def oracles(model, pr, x, seed):
    """(exact, gate): ``[G]`` sum of a dL/da per group, from hooks on the member layers."""
    kinds = {n: i.kind for n, i in pr.an.layers.items() if (i.out_groups >= 0).any()}
    mods = dict(model.named_modules())
    acts, fed_to_norm = {}, set()

    def keep(name):
        def hook(mod, inp, out):
            if kinds[name] == "norm":
                fed_to_norm.add(id(inp[0]))
            out.retain_grad()
            acts[name] = out
        return hook

    hs = [mods[n].register_forward_hook(keep(n)) for n in kinds]
    _, g = batch(seed)
    ls = losses(model(x), g)
    hs = [h.remove() for h in hs]
    sum(w * ls[t] for w, t in zip(LAM, TASKS)).backward()
    G = pr.an.num_groups
    exact = torch.zeros(G, dtype=torch.float64)
    gate = torch.zeros(G, dtype=torch.float64)
    for n, a in acts.items():
        contrib = mk.channel_contrib(a.detach(), a.grad, backend="reference").double()
        og = pr.an.layers[n].out_groups
        ok = og >= 0
        exact.index_add_(0, og[ok], contrib[ok])
        if id(a) not in fed_to_norm:   # post-norm activation, or a conv with no norm after it
            gate.index_add_(0, og[ok], contrib[ok])
    return exact, gate


@pytest.mark.parametrize("name", list(MODELS))
def test_group_taylor_is_gate_taylor(name):
    torch.manual_seed(0)
    model = MODELS[name]().train()
    oracle_model = copy.deepcopy(model)
    x, g = batch(1)
    pr = MultiTaskPruner(model, TASKS, "taylor", example_inputs=x, task_weights=LAM, min_channels=1)
    gate_mean = 0
    for seed in (1, 2):                                         # per batch
        x, g = batch(seed)
        got = pr.accumulate(losses(model(x), g))
        exact, gate = oracles(oracle_model, pr, x, seed)
        gate_mean = gate_mean + gate ** 2 / 2
        scale = float(exact.abs().max()) ** 2
        torch.testing.assert_close(got, exact ** 2, rtol=1e-4, atol=1e-6 * scale)
        # gate Taylor: the same up to the pre-norm terms (zero where no norm; eps-small with BN)
        tol = 1e-6 if name == "vgg_bias" else 1e-3
        torch.testing.assert_close(got, gate ** 2, rtol=tol, atol=tol * scale)
        for p in model.parameters():
            p.grad = None
    # prune(n) removes the n lowest groups by the oracle (mean over the two batches)
    n = 4
    lowest = set(torch.sort(gate_mean).indices[:n].tolist())
    assert set(pr.select(n)) == lowest
    assert pr.prune(n).pruned == n


def test_bn_weight_taylor_is_not_gate_taylor():
    """Why the group matters: under BN, the conv-weight-only Taylor (scope="filter") is the tiny
    pre-norm term, and ranks channels differently from gate Taylor."""
    torch.manual_seed(0)
    model = ResBN().train()
    x, g = batch(3)
    f = MultiTaskPruner(copy.deepcopy(model), TASKS, "taylor", example_inputs=x, scope="filter")
    grp = MultiTaskPruner(model, TASKS, "taylor", example_inputs=x)
    s_grp = grp.accumulate(losses(model(x), g))
    _, g = batch(3)
    f.accumulate(losses(f.model(x), g))
    s_f = f.group_scores()
    kinds = {n: i.kind for n, i in grp.an.layers.items()}
    bn = torch.tensor([any(kinds[n] == "norm" for n, _ in mem) for mem in grp.an.group_members])
    assert bn.sum() > 10
    assert s_f[bn].max() < 1e-6 * s_grp[bn].max()   # scale invariance leaves ~nothing
    assert not torch.equal(torch.argsort(s_f[bn]), torch.argsort(s_grp[bn]))
