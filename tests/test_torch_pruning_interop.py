"""mtlkernels' criteria inside Torch-Pruning 1.6 (mtlkernels.integrations.torch_pruning).

The tiny model has the patterns whose index mapping matters: a residual add coupling two
conv+BN pairs, a conv with bias + BN, a concatenation followed by one BN (so a BN's channels belong
to two groups, rows 4..7 at root positions 0..3) and two single-conv heads. The oracle lists each
group's members by hand and computes the criteria in float64 from float64 per-task gradients,
independently of both libraries.

Why ``taylor`` is checked against this oracle and against Torch-Pruning's own
``GroupTaylorImportance`` only on single-member groups: Torch-Pruning's group Taylor is a different
quantity elsewhere — ``|sum_k w dw|`` (``multivariable=True``) or ``sum_k |w dw|`` per member,
reduced over members *after* the absolute value, includes the consumers' input columns, and in 1.6.1
skips BatchNorm (it tests ``prune_groupnorm_out_channels``). Ours is ``(sum over the producer-side
members of sum_t lambda_t w g_t)^2`` (the gate Taylor). For a group whose only member is one conv
weight, ``group_reduction="first"`` and ``multivariable=True`` make theirs ``|dot|``, i.e.
``sqrt`` of ours — the one place where both define the same thing.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

tp = pytest.importorskip("torch_pruning")

sys.path.insert(0, os.path.dirname(__file__))

from mtlkernels.integrations.torch_pruning import MultiTaskImportance  # noqa: E402

warnings.filterwarnings("ignore", category=RuntimeWarning)  # compiled extension not built
pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("seg", "depth", "normal")
LAMBDA = (1.0, 0.5, 2.0)


class TinyMT(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.seg_a, self.seg_b = nn.Conv2d(8, 4, 3, padding=1, bias=False), nn.Conv2d(8, 4, 1)
        self.seg_bn, self.seg_out = nn.BatchNorm2d(8), nn.Conv2d(8, 5, 1)
        self.depth_h, self.depth_out = nn.Conv2d(8, 4, 3, padding=1, bias=False), nn.Conv2d(4, 1, 1)
        self.normal_h, self.normal_out = nn.Conv2d(8, 4, 3, padding=1, bias=False), nn.Conv2d(4, 3, 1)
        for bn in (self.stem_bn, self.bn1, self.bn2, self.seg_bn):  # default gamma=1, beta=0: degenerate
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.5, 0.5)

    def forward(self, x):
        s = F.relu(self.stem_bn(self.stem(x)))
        f = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(s))))) + s)
        seg = self.seg_out(F.relu(self.seg_bn(torch.cat([self.seg_a(f), self.seg_b(f)], 1))))
        return {"seg": seg, "depth": self.depth_out(F.relu(self.depth_h(f))),
                "normal": self.normal_out(F.relu(self.normal_h(f)))}

    def outputs(self):
        return [self.seg_out, self.depth_out, self.normal_out]


ALL = slice(None)
# group -> its members (parameter, rows), by hand; every channel's rows are aligned across members
GROUPS = {
    "residual": [("stem.weight", ALL), ("stem_bn.weight", ALL), ("stem_bn.bias", ALL),
                 ("conv2.weight", ALL), ("bn2.weight", ALL), ("bn2.bias", ALL)],
    "block": [("conv1.weight", ALL), ("conv1.bias", ALL), ("bn1.weight", ALL), ("bn1.bias", ALL)],
    "seg_a": [("seg_a.weight", ALL), ("seg_bn.weight", slice(0, 4)), ("seg_bn.bias", slice(0, 4))],
    "seg_b": [("seg_b.weight", ALL), ("seg_b.bias", ALL), ("seg_bn.weight", slice(4, 8)),
              ("seg_bn.bias", slice(4, 8))],
    "depth": [("depth_h.weight", ALL)],
    "normal": [("normal_h.weight", ALL)],
}


def _model(seed=0):
    torch.manual_seed(seed)
    return TinyMT().train()


def _batches(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(4, 3, 8, 8, generator=g)
        y = {"seg": torch.randn(4, 5, 8, 8, generator=g), "depth": torch.randn(4, 1, 8, 8, generator=g),
             "normal": torch.randn(4, 3, 8, 8, generator=g)}
        out.append((x, y))
    return out


def _losses(model, x, y):
    out = model(x)
    return {t: F.mse_loss(out[t], y[t]) for t in TASKS}


def _pruner(model, imp, **kw):
    x = _batches(1)[0][0]
    pruner = tp.pruner.MetaPruner(model, x, importance=imp, ignored_layers=model.outputs(), **kw)
    model.train()   # building the DependencyGraph left it in eval mode
    return pruner


def _named_groups(pruner):
    """The pruner's groups, named by the hand-listed group whose members hold their root."""
    names = pruner.DG._module2name
    out = {}
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):
        root = names[group[0].dep.target.module]
        name = next(n for n, mem in GROUPS.items() if any(p.startswith(root + ".") for p, _ in mem))
        out[name] = group
    assert set(out) == set(GROUPS)
    return out


def _oracle(model, batches, criterion, lam=LAMBDA, eps=1e-12):
    """float64, per batch: each channel's member rows concatenated per task, then the criterion;
    the mean over batches (per-batch criterion values, as the driver accumulates)."""
    m64 = copy.deepcopy(model).double()
    params = dict(m64.named_parameters())
    res = {n: [] for n in GROUPS}
    for x, y in batches:
        losses = _losses(m64, x.double(), {t: v.double() for t, v in y.items()})
        names = [p for mem in GROUPS.values() for p, _ in mem]
        g = {t: dict(zip(names, torch.autograd.grad(losses[t], [params[p] for p in names], retain_graph=True,
                                                    materialize_grads=True))) for t in TASKS}
        for n, mem in GROUPS.items():
            w = torch.cat([_rows(params[p].detach(), r) for p, r in mem], 1)
            gt = [torch.cat([_rows(g[t][p], r) for p, r in mem], 1) for t in TASKS]
            res[n].append(_criterion(criterion, w, gt, torch.tensor(lam, dtype=torch.float64), eps))
    return {n: torch.stack(v).mean(0) for n, v in res.items()}


def _rows(t, r):
    """``[C, K]``: the selected channels' rows of a parameter (1-D: K = 1)."""
    t = t[r]
    return t.reshape(t.shape[0], -1)


def _criterion(name, w, gt, lam, eps):
    dot = torch.stack([(w * g).sum(1) for g in gt], 1)                # [C, T]
    if name == "taylor":
        return (dot @ lam) ** 2
    if name == "taylor_task_mean_norm":
        s = dot ** 2
        return (s / (s.mean(0, keepdim=True) + eps) * lam).mean(1)
    if name == "cosine":   # a pair where either task's gradient is zero (a head of another task) counts 0
        pairs = [(i, j) for i in range(len(gt)) for j in range(i + 1, len(gt))]
        cos = [(gt[i] * gt[j]).sum(1) / (gt[i].norm(dim=1) * gt[j].norm(dim=1)) for i, j in pairs]
        return torch.stack([torch.nan_to_num(c, nan=0.0) for c in cos], 1).mean(1)
    return {"l1": w.abs().sum(1), "l2": w.norm(dim=1)}[name]


@pytest.mark.parametrize("criterion", ["taylor", "cosine", "taylor_task_mean_norm", "l1", "l2"])
def test_importance_equals_float64_oracle(criterion):
    model, batches = _model(), _batches()
    imp = MultiTaskImportance(criterion, task_weights=LAMBDA)
    pruner = _pruner(model, imp)
    for x, y in batches:
        imp.accumulate(pruner, _losses(model, x, y))
    want = _oracle(model, batches, criterion)
    for name, group in _named_groups(pruner).items():
        got = imp(group).double()
        scale = want[name].abs().max()
        torch.testing.assert_close(got, want[name], rtol=2e-3, atol=2e-4 * float(scale),
                                   msg=f"{criterion} {name}")


def test_taylor_is_sqrt_of_torch_pruning_taylor_on_single_member_groups():
    model, (x, y) = _model(), _batches(1)[0]
    imp = MultiTaskImportance("taylor", task_weights=LAMBDA)
    pruner = _pruner(model, imp)
    imp.accumulate(pruner, _losses(model, x, y))      # leaves p.grad = sum_t lambda_t g_t
    theirs = tp.importance.GroupTaylorImportance(group_reduction="first", normalizer=None, multivariable=True)
    groups = _named_groups(pruner)
    for name in ("depth", "normal"):
        torch.testing.assert_close(imp(groups[name]).sqrt(), theirs(groups[name]).float(), rtol=1e-4, atol=0)
    # where members differ (BN, biases, coupled convs) the two are not the same quantity
    assert not torch.allclose(imp(groups["block"]).sqrt(), theirs(groups["block"]).float(), rtol=1e-2)


def test_root_idxs_subset_and_concat_mapping():
    """A group built for some root channels scores exactly those (seg_b: its BN rows are 4..7)."""
    model, (x, y) = _model(), _batches(1)[0]
    imp = MultiTaskImportance("cosine")
    pruner = _pruner(model, imp)
    imp.accumulate(pruner, _losses(model, x, y))
    full = imp(_named_groups(pruner)["seg_b"])
    sub = pruner.DG.get_pruning_group(model.seg_b, tp.prune_conv_out_channels, [3, 1])
    assert [it.idxs for it in sub.items if it.dep.target.module is model.seg_bn] == [[7, 5]]
    torch.testing.assert_close(imp(sub), full[[3, 1]])
    l1 = MultiTaskImportance("l1")
    torch.testing.assert_close(l1(sub), l1(_named_groups(pruner)["seg_b"])[[3, 1]])


def _channels(model):
    return {n: m.out_channels for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m not in model.outputs()}


def test_local_meta_pruner_iterative_run():
    model, batches = _model(), _batches()
    x = batches[0][0]
    before = _channels(model)
    imp = MultiTaskImportance("cosine")
    pruner = _pruner(model, imp, pruning_ratio=0.5, iterative_steps=2)
    for xb, yb in batches:
        imp.accumulate(pruner, _losses(model, xb, yb))
    res = _named_groups(pruner)["residual"]
    scores, stem_w = imp(res), model.stem.weight.detach().clone()
    pruner.step()
    keep = int(8 * 0.75)
    torch.testing.assert_close(model.stem.weight, stem_w[scores.topk(keep).indices.sort().values])
    with pytest.raises(RuntimeError, match="pruned since"):
        imp(_named_groups(pruner)["residual"])
    for xb, yb in batches:
        imp.accumulate(pruner, _losses(model, xb, yb))
    assert imp.num_batches == len(batches)   # the prune reset the old channels' scores
    pruner.step()
    assert _channels(model) == {n: int(c * 0.5) for n, c in before.items()}
    out = model(x)
    assert {t: o.shape for t, o in out.items()} == {t: v.shape for t, v in batches[0][1].items()}
    _losses(model, *batches[0])["seg"].backward()


def test_global_meta_pruner_prunes_the_lowest_scores():
    model, batches = _model(), _batches()
    imp = MultiTaskImportance("taylor_task_sum")
    pruner = _pruner(model, imp, pruning_ratio=0.4, global_pruning=True)
    for xb, yb in batches:
        imp.accumulate(pruner, _losses(model, xb, yb))
    groups = _named_groups(pruner)
    scores = {n: imp(g) for n, g in groups.items()}
    allc = torch.cat(list(scores.values()))
    n_pruned = len(allc) - int(len(allc) * 0.6)
    thres = allc.topk(n_pruned, largest=False).values[-1]
    roots = {n: g[0].dep.target.module for n, g in groups.items()}
    pruner.step()
    # Torch-Pruning leaves a group whole rather than remove all its channels
    kept = {n: int((s > thres).sum()) or len(s) for n, s in scores.items()}
    assert {n: m.out_channels for n, m in roots.items()} == kept
    assert kept != {n: len(s) for n, s in scores.items()}
    assert model(batches[0][0])["seg"].shape == batches[0][1]["seg"].shape


def test_accumulate_leaves_summed_gradient_and_needs_a_pruner():
    model, (x, y) = _model(), _batches(1)[0]
    ref = copy.deepcopy(model)
    imp = MultiTaskImportance("cosine", task_weights={"seg": 1.0, "depth": 0.5, "normal": 2.0})
    pruner = _pruner(model, imp)
    imp.accumulate(pruner, _losses(model, x, y))
    sum(w * l for w, l in zip(LAMBDA, _losses(ref, x, y).values())).backward()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)
    with pytest.raises(TypeError, match="pruner"):
        imp.accumulate(model, _losses(model, x, y))
    with pytest.raises(RuntimeError, match="accumulate"):
        MultiTaskImportance("taylor")(_named_groups(pruner)["block"])


def test_bench_smoke(tmp_path):
    path = os.path.join(ROOT, "bench", "torch_pruning_compare.py")
    spec = importlib.util.spec_from_file_location("torch_pruning_compare", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "cmp.json"
    res = mod.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text()) == res
    assert [r["model"] for r in res["models"]] == ["tests.vgg", "tests.resnet"]
    for row in res["models"]:
        ours, theirs = row["mtlkernels"], row["torch_pruning"]
        # both analyses find the same prunable channels on these nets, and each prune removed N
        assert row["same_prunable_channels"] and ours["prunable_channels"] == theirs["prunable_channels"] > 0
        assert ours["pruned"] == ours["prune_n"] > 0
        assert ours["analysis"]["median_ms"] > 0 and theirs["build_dependency"]["median_ms"] > 0
