"""Scores carried across prunes (``carry_scores``) and the optimizer's own task weights
(``step_weights``): the two parts of the authors' protocol that live in the driver.

The oracle for carried scores is a mask-mode pruner, whose group ids never change: the carried
score of a surviving group after a compaction must be the mean (or EMA) of that group's per-batch
scores over every batch, before and after the prune."""
from __future__ import annotations

import copy
import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _models_for_pruning import MODELS, TASKS, make_data, task_losses  # noqa: E402

from mtlkernels.pruning import MultiTaskPruner  # noqa: E402

warnings.filterwarnings("ignore", category=RuntimeWarning)
pytestmark = pytest.mark.usefixtures("one_thread")


def _fed(model, pruner, batches, out=None):
    """accumulate each batch with a frozen model (lr 0: the oracle's batches see the same weights)."""
    model.train()
    for x, y in batches:
        s = pruner.accumulate(task_losses(model(x), y))
        if out is not None:
            out.append(s.cpu().clone())
        for p in model.parameters():
            p.grad = None


def _to_mask_groups(p_c, p_m):
    """compact group id -> the mask pruner's group id of the same channels (checked consistent)."""
    out = torch.full((p_c.an.num_groups,), -1, dtype=torch.int64)
    for name, info in p_c.an.layers.items():
        ok = info.out_groups >= 0
        mg = p_m.an.layers[name].out_groups[p_c._orig[name][ok]]
        g = info.out_groups[ok]
        prev = out[g]
        assert bool(((prev < 0) | (prev == mg)).all()), f"{name}: one compact group maps to two mask groups"
        out[g] = mg
    return out


def _oracle(batch_scores, acc):
    s = torch.stack(batch_scores)
    if acc == "mean":
        return s.mean(0)
    v = s[0].clone()
    for b in s[1:]:
        v = v * acc[1] + b * (1 - acc[1])
    return v


@pytest.mark.parametrize("acc", ["mean", ("ema", 0.5)], ids=["mean", "ema"])
@pytest.mark.parametrize("scope", ["group", "filter"])
@pytest.mark.parametrize("name", ["vgg", "resnet", "depthwise"])
def test_carried_scores_follow_their_groups(name, scope, acc):
    data = make_data(name, n_batches=4)
    torch.manual_seed(0)
    model = MODELS[name]()
    kw = dict(example_inputs=data[0][0], min_channels=2, scope=scope, score_accumulation=acc)
    crit = "taylor" if name != "depthwise" else "cosine"
    p_m = MultiTaskPruner(copy.deepcopy(model), TASKS, crit, mode="mask", **kw)
    carried = MultiTaskPruner(copy.deepcopy(model), TASKS, crit, carry_scores=True, **kw)
    fresh = MultiTaskPruner(copy.deepcopy(model), TASKS, crit, **kw)
    seen = []
    _fed(p_m.model, p_m, data[:2], seen)
    for p in (carried, fresh):
        _fed(p.model, p, data[:2])
    r_m, r_c, r_f = p_m.prune(5), carried.prune(5), fresh.prune(5)
    assert r_m.original_channels == r_c.original_channels == r_f.original_channels
    _fed(p_m.model, p_m, data[2:], seen)
    for p in (carried, fresh):
        _fed(p.model, p, data[2:])

    def oracle(batches):
        rows = _oracle(batches, acc)
        if scope == "filter":   # group_reduction "sum" over each group's filters
            rg = p_m._scorer.row_groups
            rows = torch.zeros(p_m.an.num_groups, dtype=torch.float64).index_add_(0, rg[rg >= 0], rows[rg >= 0])
        return rows

    for p, want in ((carried, oracle(seen)), (fresh, oracle(seen[2:]))):
        to_m = _to_mask_groups(p, p_m)
        got = p.group_scores()
        live = torch.isfinite(got)
        assert int(live.sum()) == p_m.prunable_channels()
        torch.testing.assert_close(got[live], want[to_m[live]], rtol=1e-5, atol=1e-12)
    # and the difference is real: carrying changes the scores
    assert not torch.allclose(oracle(seen), oracle(seen[2:]), rtol=1e-3, atol=0)


@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_carry_compact_equals_mask_over_rounds(name):
    """Several prunes with training between them: compaction with carried scores takes the same
    decisions as mask mode (whose group ids never change) with carried scores."""
    data = make_data(name, n_batches=6)
    torch.manual_seed(0)
    m_c = MODELS[name]()
    m_m = copy.deepcopy(m_c)
    o_c = torch.optim.SGD(m_c.parameters(), lr=0.05, momentum=0.9)
    o_m = torch.optim.SGD(m_m.parameters(), lr=0.05, momentum=0.9)
    kw = dict(example_inputs=data[0][0], min_channels=2, carry_scores=True)
    p_c = MultiTaskPruner(m_c, TASKS, "taylor", optimizer=o_c, **kw)
    p_m = MultiTaskPruner(m_m, TASKS, "taylor", optimizer=o_m, mode="mask", **kw)
    for a, b, n in ((0, 2, 6), (2, 4, 4), (4, 6, 3)):
        for m, p, o in ((m_c, p_c, o_c), (m_m, p_m, o_m)):
            for x, y in data[a:b]:
                o.zero_grad(set_to_none=True)
                p.accumulate(task_losses(m(x), y))
                o.step()
        r_c, r_m = p_c.prune(n), p_m.prune(n)
        assert r_c.pruned == n and r_c.original_channels == r_m.original_channels


def test_carried_scores_survive_save_and_resume(tmp_path):
    data = make_data("resnet", n_batches=3)
    torch.manual_seed(0)
    model = MODELS["resnet"]()
    p = MultiTaskPruner(model, TASKS, "taylor", example_inputs=data[0][0], min_channels=2, carry_scores=True)
    _fed(model, p, data[:2])
    p.prune(4)
    _fed(model, p, data[2:])
    p.save(tmp_path / "p.pt")
    q = MultiTaskPruner.resume(tmp_path / "p.pt", MODELS["resnet"], example_inputs=data[0][0])
    assert q.carry_scores
    torch.testing.assert_close(q.group_scores(), p.group_scores(), rtol=0, atol=0)
    assert q.select(3) == p.select(3)


def test_step_weights_change_the_step_not_the_scores():
    """The optimizer steps on sum_t s_t g_t (the authors': grad L_last + 2 grad L_sum) while the
    criteria keep the task weights."""
    data = make_data("vgg", n_batches=1)
    x, y = data[0]
    torch.manual_seed(0)
    model = MODELS["vgg"]()
    sw = [2.0, 2.0, 3.0]
    plain = MultiTaskPruner(copy.deepcopy(model), TASKS, "cosine", example_inputs=x)
    stepped = MultiTaskPruner(copy.deepcopy(model), TASKS, "cosine", example_inputs=x,
                              step_weights=dict(zip(TASKS, sw)))
    s_plain = plain.accumulate(task_losses(plain.model(x), y))
    s_step = stepped.accumulate(task_losses(stepped.model(x), y))
    torch.testing.assert_close(s_step, s_plain, rtol=0, atol=0)
    ref = copy.deepcopy(model)
    losses = task_losses(ref(x), y)
    sum(w * losses[t] for w, t in zip(sw, TASKS)).backward()
    for (n, p), q in zip(ref.named_parameters(), stepped.model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=n)
    # on batches without per-task gradients (score_every) the step has the same weights
    every = MultiTaskPruner(copy.deepcopy(model), TASKS, "cosine", example_inputs=x, step_weights=sw, score_every=2)
    every.accumulate(task_losses(every.model(x), y))
    for p in every.model.parameters():
        p.grad = None
    every.accumulate(task_losses(every.model(x), y))
    for (n, p), q in zip(ref.named_parameters(), every.model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("bad,msg", [([1.0, 2.0], "step_weights must have 3 entries"),
                                     ({"sky": 1.0}, "step_weights names unknown tasks")])
def test_step_weights_bad_input(bad, msg):
    x = make_data("vgg", n_batches=1)[0][0]
    with pytest.raises(ValueError, match=msg):
        MultiTaskPruner(MODELS["vgg"](), TASKS, "cosine", example_inputs=x, step_weights=bad)
