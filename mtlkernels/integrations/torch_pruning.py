"""mtlkernels' multi-task criteria as a Torch-Pruning (1.6) importance.

:class:`MultiTaskImportance` is a ``torch_pruning.importance.Importance``: any Torch-Pruning pruner
(``MetaPruner``/``BasePruner``, local or global ranking, ``round_to``, iterative steps) can rank
channels by the paper's multi-task ``cosine``, the per-task Taylor aggregations
``taylor_task_*``, group ``taylor`` / ``taylor_sq`` or ``l1`` / ``l2``
(:data:`mtlkernels.criteria.REGISTRY`)::

    import torch_pruning as tp
    from mtlkernels.integrations.torch_pruning import MultiTaskImportance

    imp = MultiTaskImportance("cosine")
    pruner = tp.pruner.MetaPruner(model, x0, importance=imp, pruning_ratio=0.5,
                                  ignored_layers=output_layers)
    for x, y in batches:
        opt.zero_grad()
        imp.accumulate(pruner, {t: loss_fn[t](o, y[t]) for t, o in model(x).items()})
        opt.step()                     # accumulate left p.grad = sum_t w_t dL_t/dp
    pruner.step()                      # ranks by the accumulated scores

Why scores are formed at ``accumulate`` time and not when the pruner asks: **statistics are
additive, criteria are not** (README, "Criteria on channel groups"). A channel group's statistics
are the sums of its member rows' statistics, but a criterion is applied once per group and per
batch (the paper's code averages per-batch criterion values), so the per-task gradients of a batch
must meet the group structure while they exist. Each ``accumulate`` therefore enumerates the
pruner's groups exactly as its ``step`` will (``DG.get_all_groups`` with its ``ignored_layers`` and
``root_module_types``), makes ONE :func:`mtlkernels.ops.filter_stats_many` call over every member
row of every group, sums them per channel with :meth:`FilterStats.sum_by`, applies
:func:`mtlkernels.criteria.score` once and averages the result over batches; ``__call__(group)``
looks the group up by its root. Weight-only criteria (``l1``, ``l2``) need no ``accumulate``: they
score the current weights when called.

**Members** of a Torch-Pruning group are the items whose handler prunes *output* channels of a
conv / linear / norm: conv and linear weight rows (dim 1 of a transposed conv), biases, norm
gamma / beta, depthwise filters. Consumers' input columns (``prune_*_in_channels`` items) are not:
their ``sum w dL/dw`` is ``sum x dL/dx`` at the consumer's input, the same first-order quantity as
the producer side, so including them would count the channel twice; this is also what makes
``taylor`` the gate Taylor of Molchanov et al. 2019 under BatchNorm. Each member row lands on the
channel ``root_idxs`` names (the index mapping of concatenations), as in Torch-Pruning's own group
importances, whose output is indexed by root channel.

Not handled: groups rooted at attention layers (Torch-Pruning re-roots them), unwrapped
``nn.Parameter`` / custom pruners (their rows are not members), grouped transposed convs.
"""
from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning.pruner import function as _fn

from .. import criteria as _criteria
from ..pruning import grads as _grads
from ..pruning.scoring import Member, ScoreAccumulator, Scorer

__all__ = ["MultiTaskImportance"]

# Items whose handler removes output channels of a module that owns per-channel parameters.
_OUT_HANDLERS = (
    _fn.prune_conv_out_channels, _fn.prune_depthwise_conv_out_channels, _fn.prune_linear_out_channels,
    _fn.prune_batchnorm_out_channels, _fn.prune_instancenorm_out_channels,
    _fn.prune_groupnorm_out_channels, _fn.prune_layernorm_out_channels,
)
_WEIGHT_ROWS = (nn.modules.conv._ConvNd, nn.Linear)

Groups = Union["tp.pruner.BasePruner", "tp.DependencyGraph"]


def _member_tensors(mod: nn.Module) -> List[Tuple[str, bool]]:
    """``(attr, transpose)`` of the parameters of ``mod`` whose rows are its output channels."""
    if isinstance(mod, _WEIGHT_ROWS):
        transposed = bool(getattr(mod, "transposed", False))
        if transposed and mod.groups != 1:   # out channels are interleaved with groups in dim 1
            return []
        out = [("weight", transposed)]
    else:
        # norms: per-channel gamma / beta only (a LayerNorm over [C, H, W] is not per channel)
        w = getattr(mod, "weight", None)
        out = [("weight", False)] if isinstance(w, Tensor) and w.dim() == 1 else []
    b = getattr(mod, "bias", None)
    if out and isinstance(b, Tensor) and b.dim() == 1:
        out.append(("bias", False))
    return out


@dataclass
class _Layout:
    """Statistics rows of the members of some groups, and the output slot of every row.

    Slots ``offsets[g]:offsets[g + 1]`` belong to group ``g`` in its root's channel order; one
    slot per root channel."""

    scorer: Scorer                                   # the driver's statistics path, fed our members
    row_slot: Tensor                                 # [rows] slot of each statistics row, -1: none
    offsets: Tuple[int, ...]
    roots: Dict[tuple, int] = field(default_factory=dict)   # (root module, handler) -> group
    has_member: List[bool] = field(default_factory=list)
    refs: List[Tuple[nn.Module, str, "weakref.ref"]] = field(default_factory=list)
    source: object = None                            # the DependencyGraph the groups came from
    _on: Dict[torch.device, Tensor] = field(default_factory=dict)

    @property
    def num_slots(self) -> int:
        return self.offsets[-1]

    def stale(self) -> bool:
        """Whether a member parameter was replaced since (Torch-Pruning replaces pruned ones)."""
        return any(getattr(m, a, None) is not r() for m, a, r in self.refs)

    def slots_on(self, device: torch.device) -> Tensor:
        if device not in self._on:
            self._on[device] = self.row_slot.to(device)
        return self._on[device]


def _layout(groups, criterion: str, backend: str) -> _Layout:
    """Rows of every member of ``groups`` (Torch-Pruning ``Group`` objects) and their slots."""
    rows: Dict[Tuple[nn.Module, str], Tensor] = {}
    transpose: Dict[Tuple[nn.Module, str], bool] = {}
    offsets, roots, has_member = [0], {}, []
    for g, group in enumerate(groups):
        root = group[0]
        start = offsets[-1]
        position = {r: j for j, r in enumerate(root.root_idxs)}
        found = False
        for item in group.items:
            root_idxs = item.root_idxs
            if item.dep.handler not in _OUT_HANDLERS or any(r not in position for r in root_idxs):
                continue
            mod = item.dep.target.module
            slots = torch.tensor([start + position[r] for r in root_idxs], dtype=torch.int64)
            for attr, tr in _member_tensors(mod):
                t = getattr(mod, attr)
                key = (mod, attr)
                if key not in rows:
                    rows[key] = torch.full((t.shape[1] if tr else t.shape[0],), -1, dtype=torch.int64)
                    transpose[key] = tr
                rows[key][torch.as_tensor(item.idxs, dtype=torch.int64)] = slots
                found = True
        roots[(root.dep.target.module, root.dep.handler)] = g
        has_member.append(found)
        offsets.append(start + len(root.idxs))
    names: Dict[nn.Module, str] = {}
    for mod, _ in rows:
        names.setdefault(mod, f"m{len(names)}")
    members = [Member(names[mod], attr, transpose[(mod, attr)], slots) for (mod, attr), slots in rows.items()]
    scorer = Scorer.for_members(criterion, {n: mod for mod, n in names.items()}, members, backend)
    row_slot = scorer.row_groups
    refs = [(mod, attr, weakref.ref(getattr(mod, attr))) for mod, attr in rows]
    return _Layout(scorer, row_slot, tuple(offsets), roots, has_member, refs)


class MultiTaskImportance(tp.importance.Importance):
    """Channel importance of a Torch-Pruning group by an mtlkernels criterion (module docstring).

    Args:
        criterion: a name from :data:`mtlkernels.criteria.CRITERIA` (``"cosine"``, ``"taylor"``,
            ``"taylor_sq"``, ``"taylor_task_sum|mean_norm|max|min"``, ``"l1"``, ``"l2"``,
            ``"random"``).
        task_weights: ``T`` loss weights ``lambda`` (a sequence in the order of the losses, or a
            mapping task -> weight); used by the criteria and for the ``p.grad`` left behind.
        normalize: segment of ``taylor_task_mean_norm``'s per-task mean: ``"layer"`` (each
            Torch-Pruning group) or ``"model"``.
        normalizer: optional rescaling of each group's scores, by name as in Torch-Pruning's
            importances (``"mean"``, ``"max"``, ``"sum"``, ``"standarization"``, ``"gaussian"``) or
            a callable; default none (the raw criterion, as the mtlkernels driver ranks).
        backend: of :func:`mtlkernels.ops.filter_stats_many`.
        seed: of the generator ``random`` draws from.

    Scores are float32 on the CPU, higher = keep; a channel with no finite score since the last
    :meth:`reset` scores ``+inf`` (never pruned first).
    """

    def __init__(self, criterion: str = "cosine", task_weights=None, *, normalize: str = "layer",
                 normalizer: Optional[Union[str, Callable[[Tensor], Tensor]]] = None,
                 backend: str = "auto", seed: int = 0) -> None:
        if criterion not in _criteria.REGISTRY:
            raise ValueError(f"unknown criterion {criterion!r}; valid: {', '.join(_criteria.CRITERIA)}")
        if normalize not in _criteria.NORMALIZE:
            raise ValueError(f"normalize must be one of {_criteria.NORMALIZE}, got {normalize!r}")
        self.criterion = criterion
        self.spec = _criteria.REGISTRY[criterion]
        self.task_weights = task_weights
        self.normalize = normalize
        self.normalizer = normalizer
        self.backend = backend
        self.generator = torch.Generator().manual_seed(seed)
        self.tasks: Optional[List[str]] = None
        self._layout: Optional[_Layout] = None
        self._acc = ScoreAccumulator(None)
        self.num_batches = 0
        self._warned_eval = False
        self._warned_tasks: set = set()   # tasks whose detached loss was already named

    # ----------------------------------------------------------------------------- accumulate
    def reset(self) -> None:
        """Forget the accumulated scores (after a prune they describe other channels)."""
        self._acc.reset()
        self.num_batches = 0

    def accumulate(self, pruner: Groups, losses, *, set_grad: bool = True,
                   retain_graph: bool = False) -> Tensor:
        """Per-task gradients of one minibatch -> one score per channel of every group, averaged.

        Args:
            pruner: the Torch-Pruning pruner that will call this importance (its ``DG``,
                ``ignored_layers`` and ``root_module_types`` define the groups), or a
                ``DependencyGraph`` (all its conv / linear rooted groups).
            losses: ``{task: scalar loss}`` or a sequence of T scalar losses of one forward pass.
            set_grad: leave ``p.grad += sum_t w_t dL_t/dp`` on every trainable parameter (as
                ``backward`` of the weighted loss would), so an optimizer step can follow.

        Returns this batch's float64 scores of every channel (the groups' slots, concatenated).
        A prune since the last call (member parameters replaced) resets the accumulated scores.
        """
        dg, ignored, root_types = _groups_of(pruner)
        if self._layout is None or self._layout.stale() or self._layout.source is not dg:
            groups = dg.get_all_groups(ignored_layers=ignored, root_module_types=root_types)
            self._layout = _layout(groups, self.criterion, self.backend)
            self._layout.source = dg
            self.reset()
        if not dg.model.training and not self._warned_eval:
            # build_dependency leaves the model in eval(); under frozen BN statistics the group
            # Taylor is no longer the gate Taylor (README, "Criteria on channel groups")
            warnings.warn("the model is in eval mode (Torch-Pruning's DependencyGraph leaves it so): "
                          "call model.train() before accumulating scores", UserWarning, stacklevel=2)
            self._warned_eval = True
        loss_list = self._loss_list(losses)
        lam = self._lambda(len(loss_list))
        params = [p for p in dg.model.parameters() if p.requires_grad] if set_grad else \
            [getattr(m, a) for m, a, _ in self._layout.refs]
        self.num_batches += 1
        if not self.spec.needs_grads:
            if set_grad:
                _grads.add_to_grad(params, _grads.summed_loss_grads(loss_list, lam, params, retain_graph))
            return torch.zeros(0, dtype=torch.float64)
        grads = _grads.task_grads(loss_list, params, retain_graph)
        if set_grad:
            _grads.add_to_grad(params, _grads.weighted_sum(params, grads, lam))
        s = self._scores(self._layout, _grads.grads_by_param(params, grads), lam)
        self._acc.update(s)
        return s

    def _loss_list(self, losses) -> List[Optional[Tensor]]:
        if isinstance(losses, Mapping):
            names = list(losses)
            if self.tasks is not None and names != self.tasks:
                raise ValueError(f"losses must name the tasks {self.tasks} in that order, got {names}")
            self.tasks, vals = names, list(losses.values())
        else:
            vals = list(losses)
            names = self.tasks or [str(i) for i in range(len(vals))]
            if len(vals) != len(names):
                raise ValueError(f"expected {len(names)} losses, got {len(vals)}")
            self.tasks = names
        return [_grads.loss_or_none(t, v, self._warned_tasks) for t, v in zip(names, vals)]

    def _lambda(self, num_tasks: int) -> List[float]:
        tw = self.task_weights
        if tw is None:
            return [1.0] * num_tasks
        if isinstance(tw, Mapping):
            missing = [t for t in self.tasks if t not in tw]
            if missing:
                raise KeyError(f"task_weights lacks tasks {missing}")
            tw = [tw[t] for t in self.tasks]
        tw = [float(w) for w in tw]
        if len(tw) != num_tasks:
            raise ValueError(f"task_weights has {len(tw)} entries for {num_tasks} tasks")
        return tw

    # ----------------------------------------------------------------------------- scoring
    def _scores(self, layout: _Layout, grad_of, lam: Optional[List[float]]) -> Tensor:
        """``[slots]`` float64 scores: ONE statistics call, ONE group sum, ONE criterion call."""
        if not layout.scorer.members:
            return torch.full((layout.num_slots,), math.nan, dtype=torch.float64)
        stats = layout.scorer.statistics(grad_of)
        grouped = stats.sum_by(layout.slots_on(stats.dot.device), layout.num_slots, offsets=layout.offsets,
                               dtype=torch.float64, check_index=False)
        return _criteria.score(grouped, self.criterion, task_weights=lam if self.spec.needs_grads else None,
                               normalize=self.normalize, generator=self.generator, dtype=torch.float64).cpu()

    @torch.no_grad()
    def __call__(self, group) -> Optional[Tensor]:
        """``[len(group[0].idxs)]`` importance of the group's root channels ``group[0].idxs``
        (``None`` for a group without members, as Torch-Pruning's importances)."""
        root = group[0]
        if not self.spec.needs_grads:
            layout = _layout([group], self.criterion, self.backend)
            if not layout.has_member[0]:
                return None
            return self._finish(self._scores(layout, lambda w: [torch.zeros_like(w)], None))
        layout, acc = self._layout, self._acc.value()
        g = None if layout is None else layout.roots.get((root.dep.target.module, root.dep.handler))
        if g is None or acc is None:
            raise RuntimeError(
                f"MultiTaskImportance({self.criterion!r}) has no scores for the group rooted at "
                f"{root.dep.target}: call imp.accumulate(pruner, losses) on at least one batch before "
                "pruner.step() (criteria that read gradients are formed per batch)")
        if layout.stale():
            raise RuntimeError(
                "the model was pruned since the last imp.accumulate(): its scores describe channels "
                "that no longer exist; accumulate again after every pruner.step()")
        if not layout.has_member[g]:
            return None
        scores = acc[layout.offsets[g]:layout.offsets[g + 1]]
        return self._finish(scores[torch.as_tensor(root.idxs, dtype=torch.int64)])

    def _finish(self, s: Tensor) -> Tensor:
        s = torch.nan_to_num(s, nan=math.inf).to(torch.float32)
        if self.normalizer is None:
            return s
        if callable(self.normalizer):
            return self.normalizer(s)
        # Torch-Pruning's own rescalings; only "lamp" needs state we do not have
        return tp.importance.GroupMagnitudeImportance._normalize(self, s, self.normalizer)


def _groups_of(source: Groups):
    """``(DependencyGraph, ignored_layers, root_module_types)`` exactly as ``source`` prunes."""
    if isinstance(source, tp.DependencyGraph):
        return source, [], (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)
    dg = getattr(source, "DG", None)
    if not isinstance(dg, tp.DependencyGraph):
        raise TypeError("accumulate needs the Torch-Pruning pruner (or its DependencyGraph) that will "
                        f"call this importance, got {type(source).__name__}")
    return dg, source.ignored_layers, source.root_module_types
