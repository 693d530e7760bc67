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
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .ops import FilterStats

__all__ = ["CRITERIA", "score", "per_task_taylor", "pairwise_cosine"]

CRITERIA = (
    "taylor",
    "taylor_sq",
    "cosine",
    "taylor_task_sum",
    "taylor_task_mean_norm",
    "taylor_task_max",
    "taylor_task_min",
    "l2",
    "l1",
    "random",
)

NORMALIZE = ("layer", "model")

TaskWeights = Optional[Union[Tensor, Sequence[float]]]


def per_task_taylor(stats: FilterStats) -> Tensor:
    """``[F, T]``: per-task group Taylor scores ``s_t[f] = dot[f, t]^2``."""
    return stats.dot * stats.dot


def pairwise_cosine(stats: FilterStats, eps: float = 1e-12) -> Tensor:
    """``[F, T, T]``: cosine between the per-task gradients of every filter.

    ``c[f, i, j] = gram[f, i, j] / (sqrt(gram[f, i, i]) * sqrt(gram[f, j, j]) + eps)``, clamped to
    ``[-1, 1]``; ``0`` where either gradient is exactly zero (including the diagonal of a zero
    gradient). NaN in ``gram`` propagates.
    """
    gram = stats.gram
    diag = torch.diagonal(gram, dim1=1, dim2=2)                     # [F, T]
    norm = diag.clamp_min(0).sqrt()                                 # sqrt of each factor: no overflow
    denom = norm.unsqueeze(2) * norm.unsqueeze(1) + eps             # [F, T, T]
    cos = (gram / denom).clamp(-1.0, 1.0)                           # clamp keeps NaN
    zero = diag == 0                                                # NaN == 0 is False: NaN stays
    zero_pair = zero.unsqueeze(2) | zero.unsqueeze(1)
    return torch.where(zero_pair, torch.zeros_like(cos), cos)


def _task_weights(task_weights: TaskWeights, stats: FilterStats) -> Optional[Tensor]:
    if task_weights is None:
        return None
    t = stats.num_tasks
    lam = torch.as_tensor(task_weights, dtype=stats.dot.dtype, device=stats.dot.device)
    if lam.dim() != 1 or lam.shape[0] != t:
        raise ValueError(
            f"task_weights must be a 1-D sequence of length T={t} (one weight per task), "
            f"got shape {list(lam.shape)}"
        )
    if not bool(torch.isfinite(lam).all()):
        raise ValueError(f"task_weights must be finite, got {lam.tolist()}")
    return lam


def _group_mean(s: Tensor, stats: FilterStats, normalize: str) -> Tensor:
    """``[F, T]``: each row's per-task mean of ``s`` over its normalisation group."""
    if normalize == "model":
        return s.mean(0, keepdim=True).expand_as(s)
    layer = stats.layer_of_filter()                                 # [F] int64
    num_layers = stats.num_layers
    sums = torch.zeros(num_layers, s.shape[1], dtype=s.dtype, device=s.device).index_add_(0, layer, s)
    counts = torch.bincount(layer, minlength=num_layers).to(s.dtype).clamp_min(1)
    return (sums / counts.unsqueeze(1)).index_select(0, layer)


def score(
    stats: FilterStats,
    criterion: str,
    *,
    task_weights: TaskWeights = None,
    eps: float = 1e-12,
    normalize: str = "layer",
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Importance score of every filter (``[F]`` float32, higher = keep); see the module table.

    Args:
        stats: statistics of one or more layers (:func:`mtlkernels.ops.filter_stats_many`).
        criterion: one of :data:`CRITERIA`.
        task_weights: ``T`` finite per-task loss weights ``lambda`` (default all ones).
        eps: guard added to the denominators of ``cosine`` and ``taylor_task_mean_norm``.
        normalize: ``"layer"`` or ``"model"``: the group over which ``taylor_task_mean_norm``
            averages each task's scores.
        generator: the ``torch.Generator`` that ``random`` draws from (default: global RNG).
    """
    if not isinstance(stats, FilterStats):
        raise TypeError(f"stats must be a FilterStats, got {type(stats).__name__}")
    if not isinstance(criterion, str) or criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; valid criteria: {', '.join(CRITERIA)}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    lam = _task_weights(task_weights, stats)
    device = stats.dot.device

    if criterion == "random":
        n = stats.num_filters
        gdev = generator.device if generator is not None else device
        return torch.rand(n, generator=generator, device=gdev, dtype=torch.float32).to(device)
    if criterion == "l2":
        out = stats.wsq.sqrt()
    elif criterion == "l1":
        out = stats.wabs
    elif criterion == "taylor":
        out = (stats.dot.sum(1) if lam is None else stats.dot @ lam) ** 2
    elif criterion == "taylor_sq":
        if lam is None:
            out = stats.wg2.sum((1, 2))
        else:
            out = torch.einsum("fij,i,j->f", stats.wg2, lam, lam)
    elif criterion == "cosine":
        t = stats.num_tasks
        if t == 1:
            warnings.warn(
                "criterion 'cosine' with a single task: there are no task pairs and every filter "
                "scores 1.0 (no ranking information); use another criterion such as 'taylor'",
                UserWarning,
                stacklevel=2,
            )
            out = torch.ones_like(stats.wsq)
        else:
            cos = pairwise_cosine(stats, eps)
            iu = torch.triu_indices(t, t, offset=1, device=device)
            out = cos[:, iu[0], iu[1]].mean(1)
    else:  # per-task Taylor aggregations
        s = per_task_taylor(stats)
        if criterion == "taylor_task_mean_norm":
            s = s / (_group_mean(s, stats, normalize) + eps)
        if lam is not None:
            s = s * lam
        if criterion == "taylor_task_sum":
            out = s.sum(1)
        elif criterion == "taylor_task_mean_norm":
            out = s.mean(1)
        elif criterion == "taylor_task_max":
            out = s.amax(1)
        else:
            out = s.amin(1)
    return out.to(torch.float32)
