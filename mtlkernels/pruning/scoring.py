"""Scoring for the pruning driver: per-task gradients -> statistics -> one score per channel group.

**Statistics are additive, criteria are not.** A pruning decision removes a channel *group*: a
conv/linear output channel with its bias, the gamma/beta of the norms and the depthwise filters it
passes through, and every channel coupled to it (the members of a residual stage). With
``scope="group"`` (default) the statistics of every member row of every group come from ONE
:func:`mtlkernels.ops.filter_stats_many` call (weight rows, and all per-channel vectors packed into
one ``K = 1`` layer), are summed per group (:meth:`FilterStats.sum_by`) and the criterion is applied
once per group. Then ``taylor`` = ``(sum_t lambda_t sum_{p in group} p dL_t/dp)^2`` is the gate
Taylor of Molchanov et al. 2019 (the paper's single-task criterion): by the chain rule, the sum
over a conv's weights and bias of ``w dL/dw`` is ``sum a dL/da`` over its output activation, and the
sum over a norm's gamma and beta is the same at the norm's output (see README, "Criteria on channel
groups").

Consumers' input columns are not members: ``sum over a consumer's input columns of w dL/dw`` is
``sum x dL/dx`` at the consumer's input, the same first-order quantity as the producer-side gate, so
adding it would count the channel twice.

``scope="filter"`` is the authors' code: the criterion per conv/linear weight filter alone, member
scores combined by ``group_reduction``.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import criteria as _criteria
from .. import ops as _ops
from .graph import Analysis

__all__ = ["DRIVER_CRITERIA", "SCOPES", "Member", "ScoreAccumulator", "Scorer", "match_rows"]

SCOPES = ("group", "filter")
#: driver-level criteria: name -> (criteria-module formula, which member tensors it reads)
DRIVER_CRITERIA: Dict[str, Tuple[str, str]] = {
    **{name: (name, "params") for name in _criteria.CRITERIA},
    "bn_scale": ("l1", "norm_weight"),   # |gamma| of the group's norms (Liu et al. 2017)
    "magnitude": ("l1", "params"),
}
REDUCTIONS = ("sum", "mean", "max", "min")
LAYER_NORMS = ("none", "l2", "mean", "max")
_WEIGHT_ROWS = ("conv", "convT", "linear", "dwconv")
_NORMS = ("norm", "groupnorm", "layernorm")
# A float32 Gram diagonal below this has lost precision to subnormals: recompute in float64.
_TINY = 2.0 ** -100


@dataclass(frozen=True)
class Member:
    """One tensor whose rows are statistics rows: ``layer.attr``, rows by output channel."""

    layer: str
    attr: str
    transpose: bool       # convT weights hold output channels in dim 1
    groups: Tensor        # [rows] group id per row (-1: never pruned)
    source: str = ""      # the analysis layer (``Analysis.layers`` key) whose channels the rows are


def members_of(an: Analysis, modules: Dict[str, nn.Module], which: str, scope: str) -> List[Member]:
    """The member tensors a criterion reads: ``params`` (group scope: every producer-side
    parameter of the group; filter scope: conv/linear/depthwise weights) or ``norm_weight``."""
    out: List[Member] = []
    for info in an.layers.values():
        if not (info.out_groups >= 0).any():
            continue
        mod = modules[info.module]
        if which == "norm_weight":
            attrs = ("weight",) if info.kind in _NORMS else ()
        elif scope == "filter":
            attrs = ("weight",) if info.kind in _WEIGHT_ROWS else ()
        elif info.kind in _WEIGHT_ROWS + _NORMS + ("scale",):
            attrs = tuple(a for a, _ in info.tensors)   # not PReLU's slope: it does not scale the channel
        else:
            attrs = ()
        for attr in attrs:
            t = mod._parameters.get(attr)   # parameters only: never a norm's running statistics
            if isinstance(t, Tensor):
                out.append(Member(info.module, attr, info.kind == "convT" and attr == "weight", info.out_groups,
                                  info.name))
    return out


class ScoreAccumulator:
    """Mean (or EMA) of per-batch scores, per row, over the batches where the row was finite.

    A batch with NaN/Inf gradients on some rows costs those rows that batch only; the other batches'
    evidence is kept. ``value()`` is NaN where a row had no finite batch (the driver never prunes
    it and reports it)."""

    def __init__(self, ema: Optional[float]) -> None:
        self.ema = ema
        self.acc: Optional[Tensor] = None
        self.count: Optional[Tensor] = None       # finite batches per row
        self.nonfinite: Optional[Tensor] = None   # non-finite batches per row

    def reset(self) -> None:
        self.acc = self.count = self.nonfinite = None

    def update(self, s: Tensor) -> None:
        s = s.to(torch.float64)
        ok = torch.isfinite(s)
        v = torch.where(ok, s, torch.zeros_like(s))
        if self.acc is None or self.acc.shape != s.shape or self.acc.device != s.device:
            self.acc, self.count, self.nonfinite = v, ok.to(torch.int64), (~ok).to(torch.int64)
            return
        if self.ema is None:
            self.acc += v
        else:
            mixed = torch.where(self.count > 0, self.acc * self.ema + v * (1.0 - self.ema), v)
            self.acc = torch.where(ok, mixed, self.acc)
        self.count += ok
        self.nonfinite += ~ok

    def value(self) -> Optional[Tensor]:
        if self.acc is None:
            return None
        nan = torch.full_like(self.acc, math.nan)
        if self.ema is None:
            return torch.where(self.count > 0, self.acc / self.count.clamp_min(1), nan)
        return torch.where(self.count > 0, self.acc, nan)

    def carry(self, index: Tensor) -> None:
        """Re-index the rows after a compaction: new row ``r`` takes old row ``index[r]``, or starts
        empty where ``index[r] < 0``."""
        if self.acc is None:
            return
        if self.acc.numel() == 0:
            self.reset()
            return
        idx = index.to(self.acc.device)
        ok, src = idx >= 0, idx.clamp_min(0)
        self.acc = torch.where(ok, self.acc[src], torch.zeros((), dtype=self.acc.dtype, device=idx.device))
        self.count = torch.where(ok, self.count[src], torch.zeros((), dtype=torch.int64, device=idx.device))
        self.nonfinite = torch.where(ok, self.nonfinite[src], torch.zeros((), dtype=torch.int64, device=idx.device))

    def state_dict(self) -> Dict[str, Optional[Tensor]]:
        return {"acc": self.acc, "count": self.count, "nonfinite": self.nonfinite}

    def load_state_dict(self, sd, num_batches: int) -> None:
        self.acc = None if sd.get("acc") is None else sd["acc"].clone()
        if self.acc is None:
            self.count = self.nonfinite = None
            return
        # checkpoints of format 1 kept only the sum: every batch counted for every row
        cnt = sd.get("count")
        self.count = cnt.clone() if cnt is not None else torch.full_like(self.acc, num_batches, dtype=torch.int64)
        bad = sd.get("nonfinite")
        self.nonfinite = bad.clone() if bad is not None else torch.zeros_like(self.count)


class Scorer:
    """Per-batch scores of the channel groups (``scope="group"``) or of the weight filters
    (``scope="filter"``) from the per-task gradients of the model's parameters."""

    def __init__(self, criterion: str, scope: str, task_weights: Optional[Sequence[float]],
                 backend: str, generator: torch.Generator) -> None:
        self.formula, self.which = DRIVER_CRITERIA[criterion]
        self.spec = _criteria.REGISTRY[self.formula]
        self.scope = scope
        self.task_weights = task_weights
        self.backend = backend
        self.generator = generator
        self.members: List[Member] = []

    @property
    def needs_grads(self) -> bool:
        return self.spec.needs_grads

    @classmethod
    def for_members(cls, criterion: str, modules: Dict[str, nn.Module], members: Sequence[Member],
                    backend: str = "auto") -> "Scorer":
        """A scorer over given member tensors (e.g. another library's groups): ``statistics`` and
        ``row_groups`` (each statistics row's ``Member.groups`` entry) without an analysis."""
        sc = cls(criterion, "group", None, backend, None)
        sc.modules, sc.members = modules, list(members)
        sc._row_order()
        return sc

    def _row_order(self) -> None:
        """``row_groups`` (the members' ``groups``) and ``row_member`` (the member index) of every
        statistics row, in row order: the 2-D+ members in order, then the 1-D ones (packed into
        one layer by ``_inputs``)."""
        order = sorted(range(len(self.members)), key=lambda i: self._tensor(self.members[i]).dim() == 1)
        self._order = order
        sizes = torch.tensor([self.members[i].groups.numel() for i in order], dtype=torch.int64)
        self.row_member = torch.repeat_interleave(torch.tensor(order, dtype=torch.int64), sizes)
        self.row_groups = (torch.cat([self.members[i].groups for i in order]) if order
                           else torch.zeros(0, dtype=torch.int64))

    def layout(self, an: Analysis, modules: Dict[str, nn.Module]) -> None:
        """(Re)build the row layout after an analysis: members, row -> group, segments."""
        self.an, self.modules = an, modules
        self.members = members_of(an, modules, self.which, self.scope)
        self._row_order()
        # group scope: groups sorted by their anchor layer (first member layer), so that a
        # per-layer criterion (taylor_task_mean_norm) and layer_norm see segments
        G = an.num_groups
        layer_pos = {n: i for i, n in enumerate(an.layers)}
        anchor = torch.tensor([layer_pos[mem[0][0]] if mem else len(layer_pos) for mem in an.group_members],
                              dtype=torch.int64)
        order = torch.sort(anchor, stable=True).indices
        self.group_pos = torch.empty(G, dtype=torch.int64)
        self.group_pos[order] = torch.arange(G)
        counts = torch.bincount(anchor, minlength=len(layer_pos) + 1).tolist()
        self.group_offsets = tuple(itertools.accumulate(counts, initial=0))
        self.group_anchor = anchor
        self.has_member = torch.zeros(G, dtype=torch.bool)
        self.has_member[self.row_groups[self.row_groups >= 0]] = True
        # statistics row -> position of its group in the sorted order (-1: no group)
        self.row_index = torch.where(self.row_groups >= 0, self.group_pos[self.row_groups.clamp_min(0)],
                                     torch.full_like(self.row_groups, -1))
        self._device_index: Dict[torch.device, Tuple[Tensor, Tensor]] = {}

    def _on(self, device: torch.device) -> Tuple[Tensor, Tensor]:
        """row_index and group_pos on ``device``, copied once per layout."""
        if device not in self._device_index:
            self._device_index[device] = (self.row_index.to(device), self.group_pos.to(device))
        return self._device_index[device]

    def _tensor(self, m: Member) -> Tensor:
        return getattr(self.modules[m.layer], m.attr)

    def row_identity(self, orig: Dict[str, Tensor]) -> Tensor:
        """``[rows]`` int64 identity of every accumulator row that survives compaction unchanged:
        group scope, per group the least (layer, original channel) among its members; filter
        scope, (member, original channel). ``orig[layer]`` maps the layer's current channels to
        its unpruned numbering. Layers are numbered by sorted name, so two analyses of one model
        agree."""
        rank = {n: i for i, n in enumerate(sorted(self.an.layers))}
        if self.scope == "group":
            out = torch.full((self.an.num_groups,), torch.iinfo(torch.int64).max, dtype=torch.int64)
            for name, info in self.an.layers.items():
                ok = info.out_groups >= 0
                key = rank[name] * 2 ** 32 + orig[name][ok]
                out.scatter_reduce_(0, info.out_groups[ok], key, reduce="amin")
            return out
        keys = []
        for m in self.members:
            if not m.source:
                raise ValueError("carrying scores across a compaction needs members from an analysis")
            attr = [a for a, _ in self.an.layers[m.source].tensors].index(m.attr)
            keys.append((rank[m.source] * 16 + attr) * 2 ** 32 + orig[m.source])
        return torch.cat([keys[i] for i in self._order]) if keys else torch.zeros(0, dtype=torch.int64)

    # ------------------------------------------------------------------------------- stats
    def _inputs(self, grad_of) -> Tuple[List[Tensor], List[List[Tensor]]]:
        """Weights and per-task gradient lists for ONE filter_stats_many call; the 1-D members
        (biases, gamma, beta: rows of K = 1) are packed into one layer."""
        weights, grads, vec_w, vec_g = [], [], [], []
        for m in self.members:
            p = self._tensor(m)
            w, g = p.detach(), [x.detach() for x in grad_of(p)]
            if m.transpose:
                w, g = w.transpose(0, 1), [x.transpose(0, 1) for x in g]
            if w.dim() == 1:
                vec_w.append(w)
                vec_g.append(g)
            else:
                weights.append(w)
                grads.append(g)
        if vec_w:
            dtype = weights[0].dtype if weights else vec_w[0].dtype
            weights.append(torch.cat(vec_w).to(dtype))
            grads.append([torch.cat([g[t] for g in vec_g]).to(dtype) for t in range(len(vec_g[0]))])
        return weights, grads

    def statistics(self, grad_of) -> _ops.FilterStats:
        """Row statistics of every member; ``grad_of(param)`` gives its T per-task gradients."""
        weights, grads = self._inputs(grad_of)
        stats = _ops.filter_stats_many(weights, grads, backend=self.backend)
        return _exact_where_float32_fails(stats, weights, grads)

    # ------------------------------------------------------------------------------- scores
    def batch_scores(self, grad_of) -> Tensor:
        """float64 scores of this batch: ``[G]`` per group (group scope) or per row (filter)."""
        stats = self.statistics(grad_of)
        if self.scope == "filter":
            return self._score(stats)
        row_index, group_pos = self._on(stats.dot.device)
        grouped = stats.sum_by(row_index, self.an.num_groups, offsets=self.group_offsets,
                               dtype=torch.float64, check_index=False)
        return self._score(grouped)[group_pos]

    def _score(self, stats: _ops.FilterStats) -> Tensor:
        lam = self.task_weights if self.spec.needs_grads else None
        return _criteria.score(stats, self.formula, task_weights=lam, generator=self.generator,
                               dtype=torch.float64)

    def weight_scores(self) -> Tensor:
        """Scores from the current weights alone (criteria that need no gradients)."""
        return self.batch_scores(lambda w: [torch.zeros_like(w)])

    def group_scores(self, rows: Tensor, alive: Tensor, layer_norm: str, reduction: str) -> Tensor:
        """``[G]`` float64 group scores from accumulated scores (group or row space); ``inf`` for
        groups with no member and for non-finite scores (never pruned)."""
        rows = rows.to(torch.float64).cpu()
        if self.scope == "group":
            gs = _normalise(rows, self.group_anchor, alive, layer_norm)
        else:
            live = (self.row_groups >= 0) & alive[self.row_groups.clamp_min(0)]
            rows = _normalise(rows, self.row_member, live, layer_norm)
            valid = self.row_groups >= 0
            red = {"sum": "sum", "mean": "mean", "max": "amax", "min": "amin"}[reduction]
            gs = torch.zeros(self.an.num_groups, dtype=torch.float64).scatter_reduce(
                0, self.row_groups[valid], rows[valid], reduce=red, include_self=False)
        gs = torch.nan_to_num(gs, nan=math.inf)
        gs[~self.has_member] = math.inf
        return gs


def match_rows(old: Tensor, new: Tensor) -> Tensor:
    """``[len(new)]``: the position of each ``new`` identity in ``old``, or -1 (identities unique)."""
    if old.numel() == 0:
        return torch.full_like(new, -1)
    srt = torch.sort(old)
    pos = torch.searchsorted(srt.values, new).clamp_max(old.numel() - 1)
    return torch.where(srt.values[pos] == new, srt.indices[pos], torch.full_like(new, -1))


def _normalise(v: Tensor, seg: Tensor, live: Tensor, how: str) -> Tensor:
    """Divide each segment's scores by the L2 norm / mean / max of its live finite scores."""
    if how == "none" or v.numel() == 0:
        return v
    out = v.clone()
    for s in torch.unique(seg).tolist():
        sel = seg == s
        x = v[sel & live]
        x = x[torch.isfinite(x)]
        if x.numel() == 0:
            continue
        d = x.norm() if how == "l2" else (x.abs().mean() if how == "mean" else x.abs().max())
        if d > 0:
            out[sel] = v[sel] / d
    return out


def _exact_where_float32_fails(stats: _ops.FilterStats, weights, grads) -> _ops.FilterStats:
    """The kernels accumulate in float32: gradients beyond ~1e19 overflow the Gram (every cosine
    NaN from finite inputs) and below ~1e-19 its products are subnormal. Layers with such rows are
    recomputed in float64 (rare: no cost otherwise). Inputs that really hold NaN/Inf stay NaN."""
    if stats.dot.dtype == torch.float64:
        return stats
    diag = torch.diagonal(stats.gram, dim1=1, dim2=2)
    bad = ~torch.isfinite(stats.gram).flatten(1).all(1) | ~torch.isfinite(stats.dot).all(1)
    bad |= ((diag > 0) & (diag < _TINY)).any(1) | ~torch.isfinite(stats.wg2).flatten(1).all(1)
    if not bool(bad.any()):
        return stats
    offs = stats.offsets
    rows = torch.nonzero(bad.cpu()).flatten()
    layers = torch.unique(torch.searchsorted(torch.tensor(offs[1:]), rows, right=True)).tolist()
    out = [t.to(torch.float64) for t in stats.tensors()]
    redo = _ops.filter_stats_many([weights[l].double() for l in layers],
                                  [[g.double() for g in grads[l]] for l in layers], backend="reference")
    for k, l in enumerate(layers):
        a, b = offs[l], offs[l + 1]
        ra, rb = redo.offsets[k], redo.offsets[k + 1]
        for dst, src in zip(out, redo.tensors()):
            dst[a:b] = src[ra:rb].to(dst.device)
    return _ops.FilterStats(*out, offsets=offs)
