"""FilterStats.sum_by: statistics of channel groups = sums of their rows' statistics (float64 parity
on random data with odd sizes, unsorted and empty groups, every dtype and CPU backend)."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    import mtlkernels as mk
    from mtlkernels.criteria import score
    from mtlkernels.ops import FilterStats, filter_stats_many

BACKENDS = [b for b in mk.available_backends("cpu") if b != "triton"]
SHAPES = [(7, 3, 3, 3), (5, 11), (13,), (1, 2, 1, 1)]   # conv, linear, per-channel (K=1), one row


def _layers(seed, t, dtype):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(s, generator=g).to(dtype) for s in SHAPES]
    gs = [torch.randn((t,) + s, generator=g).to(dtype) for s in SHAPES]
    return ws, gs


def _by_loop(ws, gs, index, num_groups):
    """float64 statistics of each group from the concatenated member rows."""
    out = {k: [] for k in ("dot", "gram", "wsq", "wabs", "wg2")}
    flat = []
    for w, g in zip(ws, gs):
        for f in range(w.shape[0]):
            flat.append((w[f].double().reshape(-1), g[:, f].double().reshape(g.shape[0], -1)))
    for grp in range(num_groups):
        members = [flat[r] for r in range(len(flat)) if int(index[r]) == grp]
        t = gs[0].shape[0]
        w = torch.cat([m[0] for m in members]) if members else torch.zeros(0, dtype=torch.float64)
        g = torch.cat([m[1] for m in members], 1) if members else torch.zeros(t, 0, dtype=torch.float64)
        out["dot"].append(g @ w)
        out["gram"].append(g @ g.T)
        out["wsq"].append((w * w).sum())
        out["wabs"].append(w.abs().sum())
        out["wg2"].append((g * w * w) @ g.T)
    return {k: torch.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("t", [1, 3])
def test_sum_by_matches_float64_groups(backend, dtype, t, poison):
    ws, gs = _layers(0, t, dtype)
    stats = filter_stats_many(ws, gs, backend=backend)
    F = stats.num_filters
    G = 9                                                # groups 5 and 8 stay empty
    g = torch.Generator().manual_seed(1)
    choices = torch.tensor([0, 1, 2, 3, 4, 6, 7, -1])
    index = choices[torch.randint(0, len(choices), (F,), generator=g)]   # unsorted, with -1 (dropped)
    got = stats.sum_by(index, G, dtype=torch.float64)
    want = _by_loop(ws, gs, index, G)
    # the kernels accumulate the member rows in float32: compare at float32 rounding of the sums
    for name in want:
        torch.testing.assert_close(getattr(got, name), want[name], rtol=2e-5, atol=2e-5, msg=name)
    for empty in (5, 8):
        assert all(bool((t[empty] == 0).all()) for t in got.tensors())
    assert got.offsets == (0, G) and got.num_tasks == t
    assert stats.sum_by(index, G).dot.dtype == stats.dot.dtype


def test_sum_by_dropped_rows_never_leak():
    """NaN statistics in rows mapped to -1 (blocked channels) must not reach any group: the trash
    row absorbs them, and groups no row maps to are exactly zero."""
    ws, gs = _layers(2, 2, torch.float32)
    stats = filter_stats_many(ws, gs, backend="reference")
    poisoned = FilterStats(*(t.clone() for t in stats.tensors()), offsets=stats.offsets)
    for t in poisoned.tensors():
        t[0] = math.nan
    index = torch.arange(stats.num_filters) % 4
    index[0] = -1
    got = poisoned.sum_by(index, 6)
    for t in got.tensors():
        assert torch.isfinite(t).all()
        assert bool((t[4:] == 0).all())
    # NaN in a row that IS in a group propagates to that group only
    index[0] = 1
    got = poisoned.sum_by(index, 6)
    assert torch.isnan(got.dot[1]).all() and torch.isfinite(got.dot[[0, 2, 3]]).all()


def test_sum_by_then_criterion_is_not_sum_of_member_scores():
    """Statistics are additive, criteria are not: the cosine of a two-row group is the cosine of
    the concatenated gradients, not the sum of the rows' cosines."""
    w = torch.ones(2, 2)
    g = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, -1.0]]])   # [T=2, F=2, K=2]
    stats = filter_stats_many([w], [g], backend="reference")
    rows = score(stats, "cosine")
    assert rows.tolist() == [1.0, -1.0]                      # member scores sum to 0
    grouped = score(stats.sum_by(torch.tensor([0, 0]), 1), "cosine")
    torch.testing.assert_close(grouped, torch.tensor([0.0]))  # g_a = (1,0,0,1), g_b = (1,0,0,-1)
    taylor = score(stats.sum_by(torch.tensor([0, 0]), 1), "taylor")
    assert taylor.item() == pytest.approx((1 + 1 + 1 - 1) ** 2)


def test_sum_by_segments_for_layer_normalisation():
    ws, gs = _layers(3, 2, torch.float32)
    stats = filter_stats_many(ws, gs, backend="reference")
    index = torch.arange(stats.num_filters) % 5
    one = score(stats.sum_by(index, 5), "taylor_task_mean_norm")
    two = score(stats.sum_by(index, 5, offsets=(0, 2, 5)), "taylor_task_mean_norm")
    assert not torch.allclose(one, two)
    alone = score(stats.sum_by(index, 5).rows(0, 2), "taylor_task_mean_norm")
    torch.testing.assert_close(two[:2], alone)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(index=torch.zeros(3, dtype=torch.int64), num_groups=2), ValueError, "one entry per row"),
    (dict(index=None, num_groups=-1), ValueError, "num_groups"),
    (dict(index="float", num_groups=2), TypeError, "integer"),
    (dict(index="high", num_groups=2), ValueError, r"values in \[0, 2\]"),
    (dict(index="low", num_groups=2), ValueError, r"values in \[-2, 0\]"),
    (dict(index=None, num_groups=2, offsets=(0, 3)), ValueError, "offsets"),
    (dict(index=None, num_groups=2, offsets=(1, 2)), ValueError, "offsets"),
])
def test_sum_by_errors(kwargs, err, match):
    ws, gs = _layers(4, 2, torch.float32)
    stats = filter_stats_many(ws[:1], gs[:1], backend="reference")   # 7 rows
    idx = {None: torch.zeros(7, dtype=torch.int64), "float": torch.zeros(7),
           "high": torch.tensor([0, 1, 2, 0, 0, 0, 0]), "low": torch.tensor([0, -2, 0, 0, 0, 0, 0])}
    i = kwargs.pop("index")
    i = idx.get(i, i) if not isinstance(i, torch.Tensor) else i
    with pytest.raises(err, match=match):
        stats.sum_by(i, **kwargs)
