"""Tests of mtlkernels.criteria against independent computations on random data."""
from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

with warnings.catch_warnings():  # the compiled extension may be missing: the reference suffices
    warnings.simplefilter("ignore", RuntimeWarning)
    import mtlkernels
    from mtlkernels import criteria
    from mtlkernels.criteria import CRITERIA, pairwise_cosine, per_task_taylor, score
    from mtlkernels.ops import filter_stats, filter_stats_many

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DT = torch.float64
SHAPES = [(5, 3, 2, 2), (4, 7)]  # a conv layer and a linear layer


def _layers(seed, t, shapes=SHAPES, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    gs = [torch.randn((t,) + s, generator=g, dtype=dtype) for s in shapes]
    return ws, gs


def _stats(ws, gs):
    return filter_stats_many(ws, gs, backend="reference")


def _rows(ws, gs):
    """Per filter of every layer: (layer, W row [K], G rows [T, K])."""
    out = []
    for l, (w, g) in enumerate(zip(ws, gs)):
        for f in range(w.shape[0]):
            out.append((l, w[f].reshape(-1), g[:, f].reshape(g.shape[0], -1)))
    return out


def close(a, b, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(a.to(DT), torch.as_tensor(b, dtype=DT), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------- basics
def test_criteria_names_and_docstring():
    assert set(CRITERIA) == {
        "taylor", "taylor_sq", "cosine", "taylor_task_sum", "taylor_task_mean_norm",
        "taylor_task_max", "taylor_task_min", "l2", "l1", "random",
    }
    assert mtlkernels.CRITERIA is CRITERIA and mtlkernels.score is score
    for name in CRITERIA:
        assert f"``{name}``" in criteria.__doc__


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_dtype_shape_device(criterion, dtype):
    ws, gs = _layers(0, 3, dtype=dtype)
    stats = _stats(ws, gs)
    s = score(stats, criterion, generator=torch.Generator().manual_seed(1))
    assert s.dtype == torch.float32 and s.shape == (9,) and s.device == ws[0].device
    assert torch.isfinite(s).all()


# ----------------------------------------------------------------------------------- cosine
@pytest.mark.parametrize("t", [2, 3, 5])
def test_cosine_matches_torch_cosine_similarity(t):
    ws, gs = _layers(1, t)
    stats = _stats(ws, gs)
    expected, mats = [], []
    for _, _, grow in _rows(ws, gs):
        pairs = [F.cosine_similarity(grow[i], grow[j], dim=0) for i, j in itertools.combinations(range(t), 2)]
        expected.append(torch.stack(pairs).mean())
        mats.append(torch.stack([F.cosine_similarity(grow[i], grow[j], dim=0)
                                 for i in range(t) for j in range(t)]).reshape(t, t))
    close(score(stats, "cosine"), torch.stack(expected))
    close(pairwise_cosine(stats), torch.stack(mats), rtol=1e-10, atol=1e-10)


def test_cosine_conflicting_tasks_score_lowest():
    w = torch.randn(3, 8, dtype=DT)
    base = torch.randn(3, 8, dtype=DT)
    g = torch.stack([base, base.clone()])
    g[1, 1] = -base[1]            # filter 1: tasks exactly opposed
    g[1, 2] = torch.randn(8, dtype=DT)
    s = score(filter_stats(w, g, backend="reference"), "cosine")
    close(s[[0, 1]], [1.0, -1.0])
    assert s.argmin() == 1 and s.argmax() == 0


def test_cosine_single_task_is_one_and_warns():
    ws, gs = _layers(2, 1)
    with pytest.warns(UserWarning, match="single task"):
        s = score(_stats(ws, gs), "cosine")
    assert torch.equal(s, torch.ones(9))


def test_cosine_zero_gradient_task_is_neutral():
    ws, gs = _layers(3, 3)
    gs = [g.clone() for g in gs]
    gs[0][2].zero_()              # task 2 has no gradient on layer 0
    gs[1][0, 1].zero_()           # task 0 has no gradient on filter 1 of layer 1
    gs[1][:, 3].zero_()           # no task has a gradient on filter 3 of layer 1
    stats = _stats(ws, gs)
    s = score(stats, "cosine")
    assert not torch.isnan(s).any() and not torch.isnan(pairwise_cosine(stats)).any()
    for idx, (l, _, grow) in enumerate(_rows(ws, gs)):
        total = 0.0
        for i, j in itertools.combinations(range(3), 2):
            if grow[i].abs().sum() > 0 and grow[j].abs().sum() > 0:
                total += F.cosine_similarity(grow[i], grow[j], dim=0).item()
        close(s[idx], total / 3)
    assert s[5 + 3] == 0


def test_cosine_nan_propagates():
    ws, gs = _layers(4, 2)
    gs = [g.clone() for g in gs]
    gs[1][0, 2, 3] = float("nan")
    s = score(_stats(ws, gs), "cosine")
    assert torch.isnan(s[5 + 2]) and torch.isfinite(s[torch.arange(9) != 7]).all()


def test_cosine_ignores_positive_task_weights():
    ws, gs = _layers(5, 3)
    stats = _stats(ws, gs)
    torch.testing.assert_close(score(stats, "cosine", task_weights=[0.1, 2.0, 7.0]), score(stats, "cosine"))


# ----------------------------------------------------------------------------------- taylor
def _linear_losses(seed, t, shapes=SHAPES):
    """Per-task losses linear in the weights, ``loss_t = sum_l sum(C_lt * W_l)``; autograd grads."""
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(s, generator=g, dtype=DT, requires_grad=True) for s in shapes]
    cs = [[torch.randn(s, generator=g, dtype=DT) for s in shapes] for _ in range(t)]

    def losses(weights):
        return [sum((c * w).sum() for c, w in zip(ct, weights)) for ct in cs]

    grads = [torch.autograd.grad(lt, ws) for lt in losses(ws)]      # grads[t][l]
    gs = [torch.stack([grads[t_][l] for t_ in range(t)]) for l in range(len(shapes))]
    return [w.detach() for w in ws], gs, losses


@pytest.mark.parametrize("weights", [None, [0.5, 2.0, -1.0]])
def test_taylor_equals_squared_loss_change_of_removing_filter(weights):
    t = 3
    ws, gs, losses = _linear_losses(6, t)
    lam = [1.0] * t if weights is None else weights

    def total(wl):
        return sum(l_ * x for l_, x in zip(lam, losses(wl))).item()

    base = total(ws)
    expected = []
    for l, w in enumerate(ws):
        for f in range(w.shape[0]):
            pruned = [x.clone() for x in ws]
            pruned[l][f] = 0
            expected.append((base - total(pruned)) ** 2)
    s = score(_stats(ws, gs), "taylor", task_weights=weights)
    close(s, expected)


def test_taylor_single_task_matches_loss_change():
    ws, gs, losses = _linear_losses(7, 1)
    base = losses(ws)[0].item()
    w0 = ws[0].clone()
    w0[3] = 0
    s = score(_stats(ws, gs), "taylor")
    close(s[3], (base - losses([w0, ws[1]])[0].item()) ** 2)


@pytest.mark.parametrize("weights", [None, [1.5, -0.5, 3.0]])
def test_taylor_sq_matches_per_weight_computation(weights):
    ws, gs = _layers(8, 3)
    lam = torch.ones(3, dtype=DT) if weights is None else torch.tensor(weights, dtype=DT)
    expected = []
    for _, wrow, grow in _rows(ws, gs):
        total = 0.0
        for k in range(wrow.numel()):
            gk = sum(lam[t].item() * grow[t, k].item() for t in range(3))
            total += (wrow[k].item() * gk) ** 2
        expected.append(total)
    close(score(_stats(ws, gs), "taylor_sq", task_weights=weights), expected)


# ----------------------------------------------------------------------------------- per-task
def _per_task_loops(ws, gs, lam):
    rows = _rows(ws, gs)
    t = gs[0].shape[0]
    s = [[(wrow @ grow[i]).item() ** 2 for i in range(t)] for _, wrow, grow in rows]
    return rows, s, t


@pytest.mark.parametrize("weights", [None, [0.3, 1.0, 4.0]])
def test_per_task_aggregations_match_loops(weights):
    ws, gs = _layers(9, 3)
    stats = _stats(ws, gs)
    lam = [1.0] * 3 if weights is None else weights
    rows, s, t = _per_task_loops(ws, gs, lam)
    close(per_task_taylor(stats), s)
    close(score(stats, "taylor_task_sum", task_weights=weights), [sum(l_ * x for l_, x in zip(lam, r)) for r in s])
    close(score(stats, "taylor_task_max", task_weights=weights), [max(l_ * x for l_, x in zip(lam, r)) for r in s])
    close(score(stats, "taylor_task_min", task_weights=weights), [min(l_ * x for l_, x in zip(lam, r)) for r in s])
    eps = 1e-12
    for normalize in ("layer", "model"):
        expected = []
        for f, (layer, _, _) in enumerate(rows):
            group = [g for g, (lg, _, _) in enumerate(rows) if normalize == "model" or lg == layer]
            vals = []
            for i in range(t):
                mean = sum(s[g][i] for g in group) / len(group)
                vals.append(lam[i] * s[f][i] / (mean + eps))
            expected.append(sum(vals) / t)
        close(score(stats, "taylor_task_mean_norm", task_weights=weights, normalize=normalize), expected)


def test_layer_and_model_normalisation_differ_on_two_layers():
    ws, gs = _layers(10, 2)
    gs = [gs[0], gs[1] * 100.0]                                     # layer 1: 10^4 x larger scores
    stats = _stats(ws, gs)
    by_layer = score(stats, "taylor_task_mean_norm")                # default normalize="layer"
    by_model = score(stats, "taylor_task_mean_norm", normalize="model")
    # per-layer normalisation: every layer's mean score is 1; model-wide: layer 1 dominates
    close(by_layer[:5].mean(), 1.0)
    close(by_layer[5:].mean(), 1.0)
    assert by_model[5:].min() > by_model[:5].max()
    assert not torch.allclose(by_layer, by_model)
    # layer normalisation equals scoring each layer on its own
    per = torch.cat([score(p, "taylor_task_mean_norm") for p in stats.per_layer()])
    torch.testing.assert_close(by_layer, per)
    # and on a single layer both normalisations coincide
    one = stats.per_layer()[0]
    torch.testing.assert_close(score(one, "taylor_task_mean_norm", normalize="model"),
                               score(one, "taylor_task_mean_norm"))


def test_mean_norm_zero_task_gives_no_nan():
    ws, gs = _layers(11, 3)
    gs = [g.clone() for g in gs]
    gs[0][1].zero_()
    s = score(_stats(ws, gs), "taylor_task_mean_norm")
    assert torch.isfinite(s).all()


# ----------------------------------------------------------------------------------- magnitude, random
def test_magnitude_criteria():
    ws, gs = _layers(12, 2)
    stats = _stats(ws, gs)
    rows = _rows(ws, gs)
    close(score(stats, "l2"), [torch.linalg.vector_norm(w).item() for _, w, _ in rows])
    close(score(stats, "l1"), [w.abs().sum().item() for _, w, _ in rows])


def test_random_uses_generator():
    ws, gs = _layers(13, 2)
    stats = _stats(ws, gs)
    a = score(stats, "random", generator=torch.Generator().manual_seed(5))
    b = score(stats, "random", generator=torch.Generator().manual_seed(5))
    c = score(stats, "random", generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert ((a >= 0) & (a < 1)).all() and a.dtype == torch.float32


# ----------------------------------------------------------------------------------- task weights
def test_task_weights_behaviour():
    ws, gs = _layers(14, 3)
    stats = _stats(ws, gs)
    for c in ("taylor", "taylor_sq", "taylor_task_sum", "taylor_task_mean_norm"):
        torch.testing.assert_close(score(stats, c, task_weights=[1.0, 1.0, 1.0]), score(stats, c))
        torch.testing.assert_close(score(stats, c, task_weights=torch.tensor([1.0, 0.0, 0.0])),
                                   score(stats, c, task_weights=(1.0, 0.0, 0.0)))
    # weight one task only: the task sum is that task's score
    close(score(stats, "taylor_task_sum", task_weights=[0.0, 2.0, 0.0]), 2 * per_task_taylor(stats)[:, 1])
    close(score(stats, "taylor", task_weights=[0.0, 2.0, 0.0]), 4 * per_task_taylor(stats)[:, 1])
    for c in ("l1", "l2"):
        torch.testing.assert_close(score(stats, c, task_weights=[3.0, 1.0, 2.0]), score(stats, c))


# ----------------------------------------------------------------------------------- errors
def test_unknown_criterion_lists_valid_ones():
    stats = _stats(*_layers(15, 2))
    with pytest.raises(ValueError, match="unknown criterion 'gradnorm'.*taylor.*cosine.*random"):
        score(stats, "gradnorm")


@pytest.mark.parametrize("bad", [[1.0], [1.0, 2.0, 3.0], [[1.0, 2.0]], []])
def test_task_weights_wrong_length(bad):
    stats = _stats(*_layers(16, 2))
    with pytest.raises(ValueError, match="task_weights.*T=2"):
        score(stats, "taylor", task_weights=bad)


@pytest.mark.parametrize("bad", [[1.0, float("nan")], [float("inf"), 1.0]])
def test_task_weights_not_finite(bad):
    stats = _stats(*_layers(17, 2))
    with pytest.raises(ValueError, match="task_weights must be finite"):
        score(stats, "taylor_task_sum", task_weights=bad)


def test_other_argument_errors():
    stats = _stats(*_layers(18, 2))
    with pytest.raises(ValueError, match="normalize"):
        score(stats, "taylor_task_mean_norm", normalize="global")
    with pytest.raises(ValueError, match="eps"):
        score(stats, "cosine", eps=-1.0)
    with pytest.raises(TypeError, match="stats must be a FilterStats"):
        score(stats.dot, "taylor")


def test_nan_propagates_in_taylor_criteria():
    ws, gs = _layers(19, 2)
    gs = [g.clone() for g in gs]
    gs[0][0, 1, 0, 0, 0] = float("nan")
    stats = _stats(ws, gs)
    for c in ("taylor", "taylor_sq", "taylor_task_sum", "taylor_task_max", "taylor_task_min"):
        s = score(stats, c)
        assert torch.isnan(s[1]) and torch.isfinite(s[torch.arange(9) != 1]).all(), c
    s = score(stats, "taylor_task_mean_norm")
    assert torch.isnan(s[:5]).all() and torch.isfinite(s[5:]).all()  # layer 0's mean is NaN


# ----------------------------------------------------------------------------------- properties
@st.composite
def _problem(draw):
    t = draw(st.integers(1, 4))
    nl = draw(st.integers(1, 3))
    shapes = []
    for _ in range(nl):
        f = draw(st.integers(1, 4))
        rest = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=3)))
        shapes.append((f,) + rest)
    seed = draw(st.integers(0, 2**31 - 1))
    return t, shapes, seed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_problem(), st.sampled_from([torch.float32, torch.float64]))
def test_reference_filter_stats_matches_direct_float64(problem, dtype):
    t, shapes, seed = problem
    ws, gs = _layers(seed, t, shapes=shapes, dtype=dtype)
    stats = _stats(ws, gs)
    n = sum(s[0] for s in shapes)
    assert stats.offsets == tuple(itertools.accumulate([0] + [s[0] for s in shapes]))
    dot = torch.zeros(n, t, dtype=DT)
    gram = torch.zeros(n, t, t, dtype=DT)
    wg2 = torch.zeros(n, t, t, dtype=DT)
    wsq = torch.zeros(n, dtype=DT)
    wabs = torch.zeros(n, dtype=DT)
    for r, (_, wrow, grow) in enumerate(_rows(ws, gs)):
        w64, g64 = wrow.to(DT), grow.to(DT)
        wsq[r] = (w64 * w64).sum()
        wabs[r] = w64.abs().sum()
        for i in range(t):
            dot[r, i] = (w64 * g64[i]).sum()
            for j in range(t):
                gram[r, i, j] = (g64[i] * g64[j]).sum()
                wg2[r, i, j] = (w64 * w64 * g64[i] * g64[j]).sum()
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for got, want in zip(stats.tensors(), (dot, gram, wsq, wabs, wg2)):
        assert got.dtype == dtype
        torch.testing.assert_close(got.to(DT), want, **tol)
    layer = stats.layer_of_filter()
    assert layer.tolist() == [l for l, s in enumerate(shapes) for _ in range(s[0])]


@settings(max_examples=25, deadline=None)
@given(_problem(), st.floats(0.0, 1.0))
def test_cosine_bounded_and_never_nan(problem, zero_frac):
    t, shapes, seed = problem
    ws, gs = _layers(seed, t, shapes=shapes)
    gs = [g * (torch.rand(g.shape[:2], generator=torch.Generator().manual_seed(seed), dtype=DT)
               .reshape(g.shape[:2] + (1,) * (g.dim() - 2)) >= zero_frac) for g in gs]
    stats = _stats(ws, gs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        s = score(stats, "cosine")
    assert torch.isfinite(s).all() and (s.abs() <= 1).all()
    for c in CRITERIA:
        if c != "cosine":
            assert torch.isfinite(score(stats, c)).all()
