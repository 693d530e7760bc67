"""Pruning criteria as vectorised formulas over :class:`mtlkernels.ops.FilterStats`.

Every criterion maps the statistics of all filters of all layers (``F`` rows, ``T`` tasks) to one
score per filter in a handful of tensor ops; **higher score = more important** (prune the lowest).
``lambda`` below is ``task_weights`` (default all ones), ``s_t[f] = dot[f, t]^2``.

========================  ==========================================================  ==========================================
name                      formula (per filter f)                                      source
========================  ==========================================================  ==========================================
``taylor``                ``(sum_t lambda_t dot[f,t])^2``                             Molchanov et al., CVPR 2019 (group Taylor
                                                                                      on the task-weighted summed loss); the
                                                                                      single-task criterion of Garg et al. 2023
``taylor_sq``             ``lambda^T wg2[f] lambda = sum_k (W_fk sum_t lambda_t       NVIDIA Taylor_pruning, method 0
                          G_t,fk)^2``                                                 (per-weight squared Taylor terms)
``cosine``                ``mean_{i<j} gram[f,i,j] / (|G_i,f| |G_j,f| + eps)``        Garg, Zhang, Guan 2023 (multi-task
                                                                                      criterion: conflicting tasks score low)
``taylor_task_sum``       ``sum_t lambda_t s_t[f]``                                   per-task Taylor, summed
``taylor_task_mean_norm`` ``mean_t lambda_t s_t[f] / (mean_{g in N(f)} s_t[g] + eps)``  per-task Taylor, each task normalised by
                          with ``N(f)`` = the filter's layer (``normalize="layer"``)  its mean score (so no task dominates by
                          or all filters (``normalize="model"``)                      scale)
``taylor_task_max``       ``max_t lambda_t s_t[f]``                                   keep a filter if any task needs it
``taylor_task_min``       ``min_t lambda_t s_t[f]``                                   keep a filter only if every task needs it
``l2``                    ``sqrt(wsq[f])``                                            Li et al., ICLR 2017 (magnitude)
``l1``                    ``wabs[f]``                                                 Li et al., ICLR 2017 (magnitude)
``random``                ``U(0, 1)`` from ``generator``                              random-pruning baseline
========================  ==========================================================  ==========================================

Conventions:

* ``cosine``: a task pair where either task's gradient on the filter is exactly zero contributes
  ``0`` (neutral: neither agreement nor conflict), never NaN. With ``T == 1`` there is no pair and
  every filter scores ``1.0``: the criterion then carries no ranking information (a
  ``UserWarning`` is issued) and the driver should use another criterion (e.g. ``taylor``).
  Cosines are clamped to ``[-1, 1]`` (rounding). Task weights do not apply: the cosine is
  invariant to positive per-task scaling, so ``task_weights`` is validated and then ignored.
* ``l1``, ``l2`` and ``random`` ignore ``task_weights`` (validated all the same).
* NaN (or Inf) in the statistics propagates to the scores of the filters it touches (for
  ``taylor_task_mean_norm`` that is every filter of the normalisation group, since the group mean
  is NaN); the driver decides what to do with them. ``random`` does not look at the statistics.
* Scores are computed in the statistics' dtype (float32, or float64 from float64 inputs) and
  returned as float32 on the statistics' device.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .ops import FilterStats

__all__ = ["CRITERIA", "REGISTRY", "Criterion", "score", "per_task_taylor", "pairwise_cosine"]

NORMALIZE = ("layer", "model")

TaskWeights = Optional[Union[Tensor, Sequence[float]]]


@dataclass(frozen=True)
class _Args:
    lam: Optional[Tensor]            # [T] float64 task weights, or None (all ones)
    eps: float
    normalize: str
    generator: Optional[torch.Generator]


@dataclass(frozen=True)
class Criterion:
    """One entry of :data:`REGISTRY`: everything else (the driver's lists, validation, CLI
    choices) derives from these fields.

    ``reads``: the statistics the formula reads (``()`` for ``random``); ``needs_grads``: whether
    it needs the per-task gradients (``False``: weight-only, the driver skips the T backward
    passes); ``multi_task``: it compares tasks, so it carries no ranking for ``T == 1``."""

    name: str
    fn: Callable[[FilterStats, _Args], Tensor]
    reads: Tuple[str, ...]
    needs_grads: bool
    multi_task: bool = False


def per_task_taylor(stats: FilterStats) -> Tensor:
    """``[F, T]``: per-task group Taylor scores ``s_t[f] = dot[f, t]^2``."""
    return stats.dot * stats.dot


def pairwise_cosine(stats: FilterStats, eps: float = 0.0) -> Tensor:
    """``[F, T, T]``: cosine between the per-task gradients of every filter (float64).

    ``c[f, i, j] = gram[f, i, j] / (sqrt(gram[f, i, i]) * sqrt(gram[f, j, j]) + eps)``, clamped to
    ``[-1, 1]``; ``0`` where either gradient is exactly zero (including the diagonal of a zero
    gradient). Formed in float64 with no absolute guard by default, so it is scale-invariant down
    to the smallest float32 gradient norms (an absolute ``1e-12`` made norms of ``2e-7`` score
    ``0.055x`` the true cosine). NaN in ``gram`` propagates.
    """
    gram = stats.gram.to(torch.float64)
    diag = torch.diagonal(gram, dim1=1, dim2=2)                     # [F, T]
    norm = diag.clamp_min(0).sqrt()                                 # sqrt of each factor: no overflow
    denom = norm.unsqueeze(2) * norm.unsqueeze(1) + eps             # [F, T, T]
    zero = diag == 0                                                # NaN == 0 is False: NaN stays
    zero_pair = zero.unsqueeze(2) | zero.unsqueeze(1)
    cos = (gram / torch.where(zero_pair, torch.ones_like(denom), denom)).clamp(-1.0, 1.0)  # clamp keeps NaN
    return torch.where(zero_pair, torch.zeros_like(cos), cos)


def _group_mean(s: Tensor, stats: FilterStats, normalize: str) -> Tensor:
    """``[F, T]``: each row's per-task mean of ``s`` over its normalisation group."""
    if normalize == "model":
        return s.mean(0, keepdim=True).expand_as(s)
    layer = stats.layer_of_filter()                                 # [F] int64
    num_layers = stats.num_layers
    sums = torch.zeros(num_layers, s.shape[1], dtype=s.dtype, device=s.device).index_add_(0, layer, s)
    counts = torch.bincount(layer, minlength=num_layers).to(s.dtype).clamp_min(1)
    return (sums / counts.unsqueeze(1)).index_select(0, layer)


# ----------------------------------------------------------------------------------- formulas
# Each takes float64 statistics; ``a.lam`` is None for equal task weights.
def _taylor(st: FilterStats, a: _Args) -> Tensor:
    return (st.dot.sum(1) if a.lam is None else st.dot @ a.lam) ** 2


def _taylor_sq(st: FilterStats, a: _Args) -> Tensor:
    return st.wg2.sum((1, 2)) if a.lam is None else torch.einsum("fij,i,j->f", st.wg2, a.lam, a.lam)


def _cosine(st: FilterStats, a: _Args) -> Tensor:
    t = st.num_tasks
    if t == 1:
        return torch.ones_like(st.wsq)
    iu = torch.triu_indices(t, t, offset=1, device=st.dot.device)
    return pairwise_cosine(st, 0.0)[:, iu[0], iu[1]].mean(1)


def _per_task(reduce: str, normalise: bool = False) -> Callable[[FilterStats, _Args], Tensor]:
    def fn(st: FilterStats, a: _Args) -> Tensor:
        s = per_task_taylor(st)
        if normalise:
            s = s / (_group_mean(s, st, a.normalize) + a.eps)
        if a.lam is not None:
            s = s * a.lam
        return getattr(s, reduce)(1)
    return fn


def _random(st: FilterStats, a: _Args) -> Tensor:
    gdev = a.generator.device if a.generator is not None else st.dot.device
    return torch.rand(st.num_filters, generator=a.generator, device=gdev, dtype=torch.float32).to(st.dot.device)


_GRAD = ("dot",)
REGISTRY: Dict[str, Criterion] = {c.name: c for c in (
    Criterion("taylor", _taylor, _GRAD, True),
    Criterion("taylor_sq", _taylor_sq, ("wg2",), True),
    Criterion("cosine", _cosine, ("gram",), True, multi_task=True),
    Criterion("taylor_task_sum", _per_task("sum"), _GRAD, True),
    Criterion("taylor_task_mean_norm", _per_task("mean", normalise=True), _GRAD, True),
    Criterion("taylor_task_max", _per_task("amax"), _GRAD, True),
    Criterion("taylor_task_min", _per_task("amin"), _GRAD, True),
    Criterion("l2", lambda st, a: st.wsq.sqrt(), ("wsq",), False),
    Criterion("l1", lambda st, a: st.wabs, ("wabs",), False),
    Criterion("random", _random, (), False),
)}
CRITERIA = tuple(REGISTRY)


def _task_weights(task_weights: TaskWeights, stats: FilterStats) -> Optional[Tensor]:
    if task_weights is None:
        return None
    t = stats.num_tasks
    lam = torch.as_tensor(task_weights, dtype=torch.float64, device=stats.dot.device)
    if lam.dim() != 1 or lam.shape[0] != t:
        raise ValueError(
            f"task_weights must be a 1-D sequence of length T={t} (one weight per task), "
            f"got shape {list(lam.shape)}"
        )
    if not bool(torch.isfinite(lam).all()):
        raise ValueError(f"task_weights must be finite, got {lam.tolist()}")
    return lam


def _float64(stats: FilterStats) -> FilterStats:
    if stats.dot.dtype == torch.float64:
        return stats
    return FilterStats(*(t.to(torch.float64) for t in stats.tensors()), offsets=stats.offsets, names=stats.names)


def score(
    stats: FilterStats,
    criterion: str,
    *,
    task_weights: TaskWeights = None,
    eps: float = 1e-12,
    normalize: str = "layer",
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Importance score of every row (``[F]``, higher = keep); see the module table.

    Args:
        stats: statistics of one or more layers (:func:`mtlkernels.ops.filter_stats_many`), or of
            channel groups (:meth:`mtlkernels.ops.FilterStats.sum_by`).
        criterion: one of :data:`CRITERIA`.
        task_weights: ``T`` finite per-task loss weights ``lambda`` (default all ones).
        eps: guard added to the denominator of ``taylor_task_mean_norm``.
        normalize: ``"layer"`` or ``"model"``: the group over which ``taylor_task_mean_norm``
            averages each task's scores (a "layer" is a segment of ``stats.offsets``).
        generator: the ``torch.Generator`` that ``random`` draws from (default: global RNG).
        dtype: of the result (``torch.float64`` keeps scores above the float32 range, e.g. the
            ``taylor`` of gradients ~1e20, finite). The formulas run in float64 either way.
    """
    if not isinstance(stats, FilterStats):
        raise TypeError(f"stats must be a FilterStats, got {type(stats).__name__}")
    if not isinstance(criterion, str) or criterion not in REGISTRY:
        raise ValueError(f"unknown criterion {criterion!r}; valid criteria: {', '.join(CRITERIA)}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    crit = REGISTRY[criterion]
    lam = _task_weights(task_weights, stats)
    if crit.multi_task and stats.num_tasks == 1:
        warnings.warn(
            f"criterion {criterion!r} with a single task: there are no task pairs and every filter "
            "scores 1.0 (no ranking information); use another criterion such as 'taylor'",
            UserWarning,
            stacklevel=2,
        )
    args = _Args(lam, float(eps), normalize, generator)
    return crit.fn(_float64(stats), args).to(dtype)
