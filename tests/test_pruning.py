"""MultiTaskPruner on four tiny multi-task nets: VGG-style (flatten -> linear head), ResNet-style
(BasicBlock + Bottleneck, with and without downsample), ASPP heads (concatenation, tuple output),
MobileNet-style (depthwise convs, inverted residuals)."""
from __future__ import annotations

import copy
import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _models_for_pruning import MODELS, TASKS, make_data, outputs_dict, task_losses  # noqa: E402

from mtlkernels.pruning import MultiTaskPruner  # noqa: E402

warnings.filterwarnings("ignore", category=RuntimeWarning)  # compiled extension not built
pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = list(MODELS)
CRIT = {"vgg": "cosine", "resnet": "taylor", "aspp": "random", "depthwise": "taylor_task_sum"}


def build(name, seed=0):
    torch.manual_seed(seed)
    return MODELS[name]()


def train_steps(model, pruner, opt, batches):
    model.train()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        pruner.accumulate(task_losses(model(x), y))
        opt.step()


def eval_out(model, x):
    model.eval()
    with torch.no_grad():
        out = outputs_dict(model(x))
    model.train()
    return out


@pytest.fixture(scope="module", params=NAMES)
def name(request):
    return request.param


@pytest.fixture(scope="module")
def data(name):
    return make_data(name, n_batches=6)


def test_compact_equals_mask(name, data):
    x0 = data[0][0]
    m_c = build(name)
    m_m = copy.deepcopy(m_c)
    o_c = torch.optim.SGD(m_c.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    o_m = torch.optim.SGD(m_m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    # per-layer normalisation and group reductions must agree between the modes too
    extra = {"vgg": dict(layer_norm="mean"), "depthwise": dict(layer_norm="l2", group_reduction="mean"),
             "aspp": dict(group_reduction="max")}.get(name, {})
    kw = dict(example_inputs=x0, min_channels=2, **extra)
    p_c = MultiTaskPruner(m_c, TASKS, "cosine", optimizer=o_c, **kw)
    p_m = MultiTaskPruner(m_m, TASKS, "cosine", optimizer=o_m, mode="mask", **kw)
    for rnd, (a, b, n) in enumerate(((0, 2, 7), (2, 4, 5))):
        train_steps(m_c, p_c, o_c, data[a:b])
        train_steps(m_m, p_m, o_m, data[a:b])
        r_c, r_m = p_c.prune(n), p_m.prune(n)
        assert r_c.pruned == r_m.pruned == n
        assert r_c.original_channels == r_m.original_channels, f"round {rnd}: different decisions"
        assert p_c.num_channels() == p_m.num_channels()
        for x, _ in data[:2]:
            a_out, b_out = eval_out(m_c, x), eval_out(m_m, x)
            for t in TASKS:
                torch.testing.assert_close(a_out[t], b_out[t], rtol=1e-4, atol=1e-5)
    # the masked channels stay zero through further training (grad hooks + step hook)
    train_steps(m_m, p_m, o_m, data[4:6])
    mods = dict(m_m.named_modules())
    for lname, d in p_m._masks.items():
        for attr, mask in d.items():
            t = getattr(mods[lname], attr)
            assert bool((t * (1 - mask)).eq(0).all()), f"{lname}.{attr} pruned entries became non-zero"
    # the compacted model really is smaller
    assert sum(p.numel() for p in m_c.parameters()) < sum(p.numel() for p in m_m.parameters())


@pytest.mark.parametrize("n", [1, 13])
def test_exact_count(name, data, n):
    m = build(name)
    pr = MultiTaskPruner(m, TASKS, CRIT[name], example_inputs=data[0][0], min_channels=1)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    train_steps(m, pr, opt, data[:1])
    before = pr.prunable_channels()
    rep = pr.prune(n)
    assert rep.pruned == n == sum(1 for _ in rep.group_scores)
    assert pr.prunable_channels() == before - n
    assert rep.channels_after < rep.channels_before


def test_min_channels_saturate(name, data):
    m = build(name)
    mins = 3
    pr = MultiTaskPruner(m, TASKS, "l2", example_inputs=data[0][0], min_channels=mins)
    start = pr.layer_channels()
    with pytest.warns(UserWarning, match="could be pruned"):
        rep = pr.prune(100000)
    assert rep.pruned > 0
    after = pr.layer_channels()
    for layer, c in after.items():
        if start[layer] >= mins:
            assert c >= mins, (layer, c)
        else:
            assert c == start[layer]
    # nothing left: another prune removes nothing
    with pytest.warns(UserWarning):
        assert pr.prune(1).pruned == 0
    for x, _ in data[:1]:
        eval_out(m, x)  # still runs


def test_min_channels_dict(name, data):
    m = build(name)
    pr0 = MultiTaskPruner(m, TASKS, "l2", example_inputs=data[0][0])
    layer = [n for n, i in pr0.an.layers.items() if i.produces and (i.out_groups >= 0).all()][0]
    pr = MultiTaskPruner(m, TASKS, "l2", example_inputs=data[0][0], min_channels={layer: 6})
    with pytest.warns(UserWarning):
        pr.prune(100000)
    assert pr.layer_channels()[layer] == 6


def test_round_to(name, data):
    m = build(name)
    k = 4
    pr = MultiTaskPruner(m, TASKS, "l2", example_inputs=data[0][0], min_channels=4, round_to=k)
    start = pr.layer_channels()
    for n in (8, 3):
        rep = pr.prune(n)
        assert n <= rep.pruned < n + k
        for layer, c in pr.layer_channels().items():
            if c != start[layer]:
                assert c % k == 0 and c >= 4, (layer, c)
    eval_out(m, data[0][0])


def test_uniform_ranking(name, data):
    m = build(name)
    pr = MultiTaskPruner(m, TASKS, "l2", example_inputs=data[0][0], min_channels=1, ranking="uniform",
                         layer_norm="l2")
    total = pr.prunable_channels()
    rep = pr.prune(total // 4)
    assert rep.pruned == total // 4
    eval_out(m, data[0][0])


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_optimizer_state_survives(name, data, opt_name):
    m = build(name)
    if opt_name == "sgd":
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        keys = ["momentum_buffer"]
    else:
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        keys = ["exp_avg", "exp_avg_sq"]
    pr = MultiTaskPruner(m, TASKS, CRIT[name], example_inputs=data[0][0], optimizer=opt, min_channels=2)
    train_steps(m, pr, opt, data[:2])
    mods = dict(m.named_modules())
    old = {}
    for lname, info in pr.an.layers.items():
        w = mods[lname].weight
        old[lname] = {k: opt.state[w][k].clone() for k in keys}
    old_orig = {k: v.clone() for k, v in pr._orig.items()}
    rep = pr.prune(9)
    assert rep.pruned == 9
    params = list(m.parameters())
    opt_params = [p for g in opt.param_groups for p in g["params"]]
    assert len(params) == len(opt_params) and all(a is b for a, b in zip(params, opt_params))
    assert set(map(id, opt.state.keys())) <= set(map(id, params))
    assert not any(b.requires_grad for b in m.buffers())
    for p in params:
        for k in keys:
            assert opt.state[p][k].shape == p.shape
    # moved state == the old state at the kept (original) channels
    for lname in rep.pruned_channels:
        info = pr.an.layers[lname]
        w = mods[lname].weight
        pos = {int(c): i for i, c in enumerate(old_orig[lname].tolist())}
        kept = torch.tensor([pos[int(c)] for c in pr._orig[lname]])
        for k in keys:
            ref = old[lname][k].index_select(info.out_dim, kept)
            if info.in_groups is not None and ref.shape != w.shape:
                continue  # input channels pruned too: checked through the shape above
            torch.testing.assert_close(opt.state[w][k], ref, rtol=0, atol=0)
    # training continues with the same optimizer object
    losses = []
    for x, y in data[2:5]:
        opt.zero_grad()
        ls = task_losses(m(x), y)
        pr.accumulate(ls)
        opt.step()
        losses.append(float(sum(v.detach() for v in ls.values())))
    assert all(torch.isfinite(torch.tensor(losses)))
    pr.prune(3)
    train_steps(m, pr, opt, data[5:6])


def _run(name, data, ckpt=None, stop_at=None, resume_from=None):
    """accumulate on batches, prune after batches 1 and 3 (0-based); optionally save after batch 2."""
    def opt_fn(params):
        return torch.optim.SGD(params, lr=0.02, momentum=0.9)

    kw = dict(example_inputs=data[0][0])
    if resume_from is None:
        m = build(name)
        opt = opt_fn(m.parameters())
        pr = MultiTaskPruner(m, TASKS, CRIT[name], optimizer=opt, min_channels=2,
                             score_accumulation=("ema", 0.5) if name == "vgg" else "mean", seed=3,
                             mode="mask" if name == "depthwise" else "compact", **kw)
        start = 0
    else:
        pr = MultiTaskPruner.resume(resume_from, lambda: MODELS[name](), optimizer_fn=opt_fn, **kw)
        m, opt = pr.model, pr.optimizer
        start = pr.extra["step"] + 1
    for i in range(start, 5):
        train_steps(m, pr, opt, data[i:i + 1])
        if i in (1, 3):
            pr.prune(4)
        if ckpt is not None and i == 2:
            pr.save(ckpt, extra={"step": i})
    return pr, eval_out(m, data[0][0])


def test_resume_identical(name, data, tmp_path):
    ckpt = str(tmp_path / "pruner.pt")
    pr_a, out_a = _run(name, data, ckpt=ckpt)
    assert os.path.exists(ckpt) and not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
    pr_b, out_b = _run(name, data, resume_from=ckpt)
    assert pr_a.history == pr_b.history
    assert len(pr_a.history) == 2
    for t in TASKS:
        torch.testing.assert_close(out_a[t], out_b[t], rtol=0, atol=0)
    # state_dict / load_state_dict round trip on a live pruner
    pr_c = MultiTaskPruner(pr_b.model, TASKS, CRIT[name], example_inputs=data[0][0], min_channels=2,
                           mode=pr_a.mode)
    pr_c.load_state_dict(pr_a.state_dict())
    assert pr_c.history == pr_a.history and pr_c.total_batches == pr_a.total_batches
    assert pr_c.num_channels() == pr_a.num_channels()
    if pr_a.mode == "compact":  # a checkpoint of another architecture is refused
        with pytest.raises(ValueError, match="another architecture"):
            MultiTaskPruner.load(ckpt, pr_b.model, example_inputs=data[0][0])
    else:  # a mask-mode state does not fit a compact-mode pruner
        with pytest.raises(ValueError, match="mode"):
            MultiTaskPruner(pr_b.model, TASKS, "l1", example_inputs=data[0][0]).load_state_dict(pr_a.state_dict())


def test_reinit_and_save_load(name, data, tmp_path):
    from mtlkernels.pruning import count_params_flops, load_pruned, save_pruned

    m = build(name)
    pr = MultiTaskPruner(m, TASKS, "l1", example_inputs=data[0][0], min_channels=2)
    before = count_params_flops(m, data[0][0], tasks=TASKS)
    pr.prune(15)
    after = count_params_flops(m, data[0][0], tasks=TASKS)
    for t in TASKS:
        assert after[t]["params"] < before[t]["params"] and after[t]["flops"] < before[t]["flops"]
    new = pr.reinit(seed=1)
    assert [p.shape for p in new.parameters()] == [p.shape for p in m.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(new.parameters(), m.parameters()))
    assert torch.equal(next(pr.reinit(seed=1).parameters()), next(new.parameters()))
    eval_out(new, data[0][0])
    path = str(tmp_path / "pruned.pt")
    save_pruned(m, path)
    loaded = load_pruned(lambda: MODELS[name](), path)
    a, b = eval_out(m, data[1][0]), eval_out(loaded, data[1][0])
    for t in TASKS:
        torch.testing.assert_close(a[t], b[t], rtol=0, atol=0)
