"""The multi-task pruning driver: :class:`MultiTaskPruner`.

One pruning iteration, as in Garg, Zhang, Guan (2023) and NVIDIA's Taylor_pruning code:

1. ``accumulate(losses)`` every training step: per-task gradients of every trainable parameter
   (T backward passes through one graph with ``retain_graph``; or one batched backward,
   ``grad_mode="batched"``), ``p.grad += sum_t lambda_t g_t`` for the optimizer (no extra backward),
   ONE :func:`mtlkernels.ops.filter_stats_many` call over every scored weight, ONE
   :func:`mtlkernels.criteria.score` call, and the per-filter scores are accumulated (mean over
   batches, or an EMA).
2. ``prune(n)``: (all-reduce of the accumulated scores under ``torch.distributed``), optional
   per-layer normalisation, one score per channel group (``group_reduction`` over its members'
   filters), global or uniform ranking under the minimum-channel and rounding rules, then ONE
   :func:`mtlkernels.ops.gather_many` call that shrinks every affected tensor (weights, biases, BN
   parameters and running statistics, the input channels of every consumer, gradients and the
   optimizer's per-parameter state); the modules get new ``Parameter`` objects, the optimizer's
   ``param_groups`` and ``state`` are moved onto them. In ``mode="mask"`` the pruned channels are
   zeroed instead (weights, BN, consumers' input columns, optimizer state) and kept at zero by
   gradient hooks and an optimizer step hook.
"""
from __future__ import annotations

import copy
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import criteria as _criteria
from .graph import Analysis, analyse
from . import grads as _grads
from . import ranking as _ranking
from . import surgery as _surgery
from .io import (CheckpointError, architecture, atomic_save, check_fingerprint, fingerprint, model_from_checkpoint,
                 read_kind)
from .scoring import DRIVER_CRITERIA, LAYER_NORMS, REDUCTIONS, SCOPES, ScoreAccumulator, Scorer, match_rows

__all__ = ["MultiTaskPruner", "PruneReport", "GRAD_CRITERIA", "WEIGHT_CRITERIA", "PRUNER_CRITERIA"]

PRUNER_CRITERIA = tuple(DRIVER_CRITERIA)
GRAD_CRITERIA = tuple(c for c, (f, _) in DRIVER_CRITERIA.items() if _criteria.REGISTRY[f].needs_grads)
#: criteria that need no gradients: ``accumulate`` runs one backward pass, not T, and ``prune``
#: may be called without ``accumulate``.
WEIGHT_CRITERIA = tuple(c for c in PRUNER_CRITERIA if c not in GRAD_CRITERIA)


@dataclass
class PruneReport:
    """What one ``prune`` call did. ``pruned_channels[layer]``: the removed output channels of the
    layer, in its numbering before this call; ``original_channels[layer]``: the same channels in
    the numbering of the unpruned model."""

    step: int
    requested: int
    pruned: int
    channels_before: int
    channels_after: int
    pruned_channels: Dict[str, List[int]] = field(default_factory=dict)
    original_channels: Dict[str, List[int]] = field(default_factory=dict)
    layer_channels: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    group_scores: List[float] = field(default_factory=list)
    batches: int = 0
    #: channel groups left out of the ranking because no batch since the last prune gave them a
    #: finite score (NaN/Inf gradients or weights), with the number of non-finite batches
    nonfinite_groups: Dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["layer_channels"] = {k: list(v) for k, v in self.layer_channels.items()}
        return d

    def __getitem__(self, key):  # dict-style access
        return getattr(self, key)


class MultiTaskPruner:
    """Dependency-aware structured pruning of a multi-task network (see the module docstring).

    Args:
        model: the network; ``forward(x)`` returns ``{task: output}`` (or a tuple / list).
        tasks: task names, in the order of the per-task statistics.
        criterion: one of :data:`PRUNER_CRITERIA` (``mtlkernels.criteria.CRITERIA`` plus
            ``"bn_scale"``: ``|gamma|`` of the BatchNorm members of a group, and ``"magnitude"``:
            an alias of ``"l1"``, the filter's L1 norm as in Li et al. 2017).
        example_inputs: a batch (tensor or tuple of tensors) used to trace shapes and count FLOPs.
        optimizer: optional; its per-parameter state is compacted with the model.
        exclude: module names whose output channels are never pruned (their input channels still
            follow their producers). Layers whose output reaches the model output are excluded
            automatically.
        min_channels: per-layer minimum of kept channels, an int or ``{name: int}`` (others 1).
        round_to: keep counts are kept multiples of this (channel groups are pruned in chunks).
        ranking: ``"global"`` (one ranking over all groups) or ``"uniform"`` (the same fraction of
            every coupled layer set).
        layer_norm: per-layer normalisation of scores before ranking: ``none``, ``l2`` (divide by
            the layer's L2 norm), ``mean``, ``max`` (group scope: the groups whose first member is
            the layer).
        scope: ``"group"`` (default): every criterion is applied once per channel group, to the
            summed statistics of all its producer-side parameters (weight rows, biases, norm
            gamma/beta, depthwise filters, coupled residual members), so ``taylor`` is gate Taylor.
            ``"filter"``: the authors' code: per conv/linear weight filter, member scores combined
            by ``group_reduction``.
        group_reduction: ``scope="filter"`` only: how a group's member filters' scores combine:
            ``sum`` (default), ``mean``, ``max``, ``min``.
        score_accumulation: ``"mean"`` (mean over batches since the last prune, or with
            ``carry_scores`` since the first)
            or ``("ema", momentum)``.
        carry_scores: keep the accumulated scores of the surviving groups (or filters) across
            prunes instead of starting afresh after each: the mean (or EMA) then runs over every
            batch since the first ``accumulate``. The authors' Taylor arm does this (their gate
            scores are never reset); compaction renumbers the groups, and the scores follow them.
        task_weights: per-task loss weights (dict or sequence): ``p.grad = sum_t w_t g_t`` and the
            criteria's ``lambda``.
        step_weights: per-task weights of the gradient ``accumulate`` leaves for the optimizer
            when it should differ from ``task_weights`` (which the criteria keep), e.g. the
            authors' ``grad L_last + 2 grad L_sum``: ``(2, ..., 2, 3)``.
        mode: ``"compact"`` (physically remove channels) or ``"mask"`` (zero them).
        seed: seed of the pruner's own generator (``random`` criterion), saved with its state.
        score_every: compute per-task gradients and scores on every ``k``-th batch since the last
            prune only (a plain backward of the weighted summed loss on the others); scores
            average over the scored batches.
        grad_mode: ``"loop"`` (T ``autograd.grad`` calls, ``retain_graph``) or ``"batched"`` (one
            ``is_grads_batched`` call; falls back to the loop if the graph does not support it).
        backend: backend of the mtlkernels ops.
        warn_unsupported: warn (once) about the layers/ops the analysis leaves unpruned.
        sync_grads: ``"auto"`` (default): when ``torch.distributed`` is initialised with more than
            one rank, the gradient ``accumulate`` leaves in ``p.grad`` is averaged across ranks (one
            coalesced all_reduce), since its ``autograd.grad`` calls bypass DDP's reducer;
            ``True`` / ``False`` force it on / off.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[str],
        criterion: str = "cosine",
        *,
        example_inputs,
        optimizer: Optional[torch.optim.Optimizer] = None,
        exclude: Sequence[str] = (),
        min_channels: Union[int, Mapping[str, int]] = 5,
        round_to: Optional[int] = None,
        ranking: str = "global",
        layer_norm: str = "none",
        group_reduction: str = "sum",
        scope: str = "group",
        score_accumulation: Union[str, Tuple[str, float], List] = "mean",
        carry_scores: bool = False,
        task_weights: Optional[Union[Mapping[str, float], Sequence[float]]] = None,
        step_weights: Optional[Union[Mapping[str, float], Sequence[float]]] = None,
        mode: str = "compact",
        seed: int = 0,
        grad_mode: str = "loop",
        score_every: int = 1,
        backend: str = "auto",
        warn_unsupported: bool = True,
        sync_grads: Union[str, bool] = "auto",
    ) -> None:
        if criterion not in PRUNER_CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; valid: {', '.join(PRUNER_CRITERIA)}")
        if ranking not in ("global", "uniform"):
            raise ValueError(f"ranking must be 'global' or 'uniform', got {ranking!r}")
        if layer_norm not in LAYER_NORMS:
            raise ValueError(f"layer_norm must be one of {LAYER_NORMS}, got {layer_norm!r}")
        if group_reduction not in REDUCTIONS:
            raise ValueError(f"group_reduction must be one of {REDUCTIONS}, got {group_reduction!r}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        if mode not in ("compact", "mask"):
            raise ValueError(f"mode must be 'compact' or 'mask', got {mode!r}")
        if grad_mode not in ("loop", "batched"):
            raise ValueError(f"grad_mode must be 'loop' or 'batched', got {grad_mode!r}")
        if isinstance(score_every, bool) or not isinstance(score_every, int) or score_every < 1:
            raise ValueError(f"score_every must be an int >= 1, got {score_every!r}")
        if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
            raise ValueError(f"round_to must be None or a positive int, got {round_to!r}")
        if isinstance(score_accumulation, str):
            if score_accumulation != "mean":
                raise ValueError("score_accumulation must be 'mean' or ('ema', momentum)")
            self._ema: Optional[float] = None
        else:
            kind, mom = score_accumulation
            if kind != "ema" or not 0.0 <= float(mom) < 1.0:
                raise ValueError("score_accumulation must be 'mean' or ('ema', momentum in [0, 1))")
            self._ema = float(mom)
        self.model = model
        self.tasks = list(tasks)
        if len(set(self.tasks)) != len(self.tasks) or not self.tasks:
            raise ValueError(f"tasks must be distinct names, got {self.tasks}")
        self.criterion = criterion
        self.example_inputs = example_inputs
        self.optimizer = optimizer
        self.exclude = list(exclude)
        self.min_channels = dict(min_channels) if isinstance(min_channels, Mapping) else int(min_channels)
        self.round_to = round_to
        self.ranking = ranking
        self.layer_norm = layer_norm
        self.group_reduction = group_reduction
        self.scope = scope
        self.score_accumulation = score_accumulation if isinstance(score_accumulation, str) else ["ema", self._ema]
        self.carry_scores = bool(carry_scores)
        self.task_weights = tw = self._per_task("task_weights", task_weights)
        self.step_weights = self._per_task("step_weights", step_weights)
        self.mode = mode
        self.seed = int(seed)
        self.grad_mode = grad_mode
        self.score_every = score_every
        self.backend = backend
        self.warn_unsupported = warn_unsupported
        self.sync_grads = sync_grads
        names = {n for n, _ in model.named_modules()}
        bad = [n for n in self.exclude if n not in names]
        if isinstance(self.min_channels, dict):
            bad += [n for n in self.min_channels if n not in names]
        if bad:
            raise ValueError(f"exclude / min_channels name modules the model does not have: {bad}")
        self.generator = torch.Generator().manual_seed(self.seed)
        self.history: List[Dict[str, Any]] = []
        self.num_batches = 0          # batches accumulated since the last prune
        self.total_batches = 0        # accumulate() calls in all
        self.num_prunes = 0
        self._acc = ScoreAccumulator(self._ema)
        self._scorer = Scorer(criterion, scope, tw, backend, self.generator)
        self._warned_tasks: set = set()
        self._batched_ok: Optional[bool] = None
        self.extra: Dict[str, Any] = {}
        self._analyse()
        # original channel numbering of every shrinkable layer
        self._orig = {n: torch.arange(i.out_groups.numel()) for n, i in self.an.layers.items()}
        self._alive = torch.ones(self.an.num_groups, dtype=torch.bool)
        self._mask = _surgery.Masks()
        if mode == "mask":
            self._mask.install_hooks(self.an, self._modules, self.optimizer)

    def _per_task(self, name: str, w) -> Optional[List[float]]:
        """Per-task weights in task order from a dict (missing tasks 1) or a sequence; None stays."""
        if w is None:
            return None
        if isinstance(w, Mapping):
            unknown = set(w) - set(self.tasks)
            if unknown:
                raise ValueError(f"{name} names unknown tasks {sorted(unknown)}")
            return [float(w.get(t, 1.0)) for t in self.tasks]
        out = [float(v) for v in w]
        if len(out) != len(self.tasks):
            raise ValueError(f"{name} must have {len(self.tasks)} entries, got {len(out)}")
        return out

    # ------------------------------------------------------------------------------- analysis
    def _analyse(self) -> None:
        self.an: Analysis = analyse(self.model, self.example_inputs, self.exclude)
        self.unsupported = list(self.an.unsupported)
        if self.unsupported and self.warn_unsupported:
            warnings.warn(
                "mtlkernels.pruning: these layers/ops are not understood and the channels they touch "
                "are left unpruned: " + ", ".join(self.unsupported), UserWarning, stacklevel=3)
            self.warn_unsupported = False  # once per pruner
        self._modules = dict(self.model.named_modules())
        self._scorer.layout(self.an, self._modules)
        if self.criterion == "bn_scale" and not self._scorer.members:
            raise ValueError("criterion 'bn_scale' needs BatchNorm layers with affine weights in prunable groups")

    # ------------------------------------------------------------------------------- counts
    def prunable_channels(self) -> int:
        """Number of channel groups that can still be pruned (alive, not blocked)."""
        return int(self._alive.sum())

    def num_channels(self) -> int:
        """Output channels (filters) of all conv / linear layers, pruned ones (mask mode) excluded."""
        total = 0
        for n, info in self.an.layers.items():
            if info.produces:
                og = info.out_groups
                dead = _surgery.hit(og, ~self._alive)
                total += int(og.numel() - dead.sum())
        return total

    def layer_channels(self) -> Dict[str, int]:
        """Alive output channels of every shrinkable layer (conv, linear, norm, depthwise, PReLU)."""
        out = {}
        for n, info in self.an.layers.items():
            og = info.out_groups
            dead = _surgery.hit(og, ~self._alive)
            out[n] = int(og.numel() - dead.sum())
        return out

    def _min_of(self, name: str) -> int:
        if isinstance(self.min_channels, dict):
            return max(1, int(self.min_channels.get(name, 1)))
        return max(1, self.min_channels)

    # ------------------------------------------------------------------------------- accumulate
    def _loss_list(self, losses) -> List[Optional[Tensor]]:
        if isinstance(losses, Mapping):
            missing = [t for t in self.tasks if t not in losses]
            if missing:
                raise KeyError(f"losses lacks tasks {missing} (expected {self.tasks})")
            vals = [losses[t] for t in self.tasks]
        else:
            vals = list(losses)
            if len(vals) != len(self.tasks):
                raise ValueError(f"expected {len(self.tasks)} losses, got {len(vals)}")
        return [_grads.loss_or_none(t, v, self._warned_tasks) for t, v in zip(self.tasks, vals)]

    def _task_grads(self, losses: List[Optional[Tensor]], params: List[Tensor], retain_graph: bool):
        """``[T][P]`` per-task gradients (None where unused)."""
        live = sum(l is not None for l in losses)
        if self.grad_mode == "batched" and self._batched_ok is not False and live > 1:
            try:
                grads = _grads.batched_task_grads(losses, params, retain_graph)
                self._batched_ok = True
                return grads
            except RuntimeError as exc:
                if self._batched_ok is None:
                    warnings.warn(f"grad_mode='batched' failed ({exc}); using T backward passes",
                                  UserWarning, stacklevel=3)
                self._batched_ok = False
        return _grads.task_grads(losses, params, retain_graph)

    def accumulate(self, losses, *, retain_graph: bool = False) -> Tensor:
        """Per-task gradients of one minibatch -> scores, accumulated.

        Leaves ``p.grad += sum_t w_t dL_t/dp`` on every trainable parameter (as ``backward`` on
        the weighted summed loss would; ``w`` = ``step_weights``, else ``task_weights``), so the
        caller then runs ``optimizer.step()``.
        Returns this batch's float64 scores: one per channel group (``scope="group"``) or per
        scored filter (``scope="filter"``); empty for criteria that need no gradients (they run
        one backward pass and score the weights at ``prune`` time).
        """
        loss_list = self._loss_list(losses)
        params = [p for p in self.model.parameters() if p.requires_grad]
        tw = self.step_weights or self.task_weights or [1.0] * len(self.tasks)
        # per-task gradients only on every score_every-th batch (and the first after a prune):
        # T backward passes cost 2.3-2.6x a plain step, and the scores are averages anyway
        scoring = self._scorer.needs_grads and self.num_batches % self.score_every == 0
        if scoring:
            grads = self._task_grads(loss_list, params, retain_graph)
            self._set_grads(params, grads, tw)
        else:
            self._set_grads(params, [_grads.summed_loss_grads(loss_list, tw, params, retain_graph)], [1.0])
        self.num_batches += 1
        self.total_batches += 1
        if not scoring:
            return torch.zeros(0, dtype=torch.float64)
        if not self._scorer.members:  # nothing prunable: count the batch all the same
            self._acc.update(torch.zeros(0, dtype=torch.float64))
            return torch.zeros(0, dtype=torch.float64)
        s = self._scorer.batch_scores(_grads.grads_by_param(params, grads))
        self._acc.update(s)
        return s   # on the model's device: no copy to the host per step

    @torch.no_grad()
    def _set_grads(self, params: List[Tensor], grads: List[List[Optional[Tensor]]], tw: List[float]) -> None:
        """``p.grad += sum_t tw_t grads_t`` (one list per task, or one list already summed),
        masked in mask mode and averaged across ranks when asked."""
        tots = _grads.weighted_sum(params, grads, tw, self._mask_tensor if self.mode == "mask" else None)
        if self._sync_grads():
            tots = self._allreduce_grads(params, tots)
        _grads.add_to_grad(params, tots)

    def _sync_grads(self) -> bool:
        if self.sync_grads == "auto":
            return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        return bool(self.sync_grads)

    def _allreduce_grads(self, params: List[Tensor], tots: List[Optional[Tensor]]) -> List[Optional[Tensor]]:
        """Average the gradients of this call across ranks (one coalesced all_reduce per dtype and
        device; a parameter without gradient on this rank contributes zeros)."""
        world = dist.get_world_size()
        full = [torch.zeros_like(p) if t is None else t for p, t in zip(params, tots)]
        buckets: Dict[Tuple[torch.dtype, torch.device], List[int]] = {}
        for i, t in enumerate(full):
            buckets.setdefault((t.dtype, t.device), []).append(i)
        for idx in buckets.values():
            flat = torch.cat([full[i].reshape(-1) for i in idx])
            dist.all_reduce(flat)
            flat /= world
            off = 0
            for i in idx:
                n = full[i].numel()
                full[i] = flat[off:off + n].view_as(full[i])
                off += n
        return full

    def scores(self) -> Tensor:
        """The accumulated float64 scores (per group, or per scored filter with
        ``scope="filter"``), averaged across ranks when ``torch.distributed`` is initialised. NaN
        where no batch since the last prune gave a finite score. Criteria that need no gradients
        score the current weights."""
        if not self._scorer.needs_grads:
            acc = self._scorer.weight_scores().cpu()
        else:
            acc = self._acc.value()
            if acc is None:
                raise RuntimeError(f"criterion {self.criterion!r} needs gradients: call accumulate() before prune()")
            acc = acc.cpu()
        if dist.is_available() and dist.is_initialized():
            backend = dist.get_backend()
            dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
            buf = acc.to(dev)
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            acc = buf.cpu() / dist.get_world_size()
        return acc

    def _nonfinite_groups(self) -> Dict[int, int]:
        """Alive groups with no finite score since the last prune -> their non-finite batches."""
        if not self._scorer.needs_grads or self._acc.acc is None:
            return {}
        dead = (self._acc.count == 0).cpu()
        bad = self._acc.nonfinite.cpu()
        rows = torch.nonzero(dead & (bad > 0)).flatten()
        groups = rows if self.scope == "group" else self._scorer.row_groups[rows]
        out: Dict[int, int] = {}
        for r, g in zip(rows.tolist(), groups.tolist()):
            if g >= 0 and bool(self._alive[g]):
                out[g] = max(out.get(g, 0), int(bad[r]))
        return out

    # ------------------------------------------------------------------------------- ranking
    def group_scores(self) -> Tensor:
        """``[G]`` float64 score of every channel group; ``inf`` (never pruned) for groups with no
        scored member or no finite score."""
        return self._scorer.group_scores(self.scores(), self._alive, self.layer_norm, self.group_reduction)

    def select(self, n: int, gscore: Optional[Tensor] = None) -> List[int]:
        """The group ids ``prune(n)`` would remove (the ranking, without touching the model)."""
        if gscore is None:
            gscore = self.group_scores()
        return _ranking.select(self.an, gscore, self._alive, self.layer_channels(), n, self.ranking,
                               self.round_to, self._min_of)

    # ------------------------------------------------------------------------------- prune
    def prune(self, n: int) -> PruneReport:
        """Remove the ``n`` lowest-scoring channel groups (with ``round_to``, whole chunks: at least
        ``n`` and fewer than ``n + round_to``), compact the model (or mask it), reset the scores."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        before = self.num_channels()
        layer_before = self.layer_channels()
        gscore = self.group_scores() if n > 0 else torch.zeros(self.an.num_groups, dtype=torch.float64)
        nonfinite = self._nonfinite_groups() if n > 0 else {}
        picked = self.select(n, gscore) if n > 0 else []
        if nonfinite:
            warnings.warn(f"prune({n}): {len(nonfinite)} channel groups had no finite score in the "
                          f"{self.num_batches} batches since the last prune (NaN/Inf gradients or weights) "
                          "and were not considered; PruneReport.nonfinite_groups lists them", UserWarning, stacklevel=2)
        if len(picked) < n:
            warnings.warn(f"prune({n}): only {len(picked)} channel groups could be pruned under the "
                          "minimum-channel rules" + (" and without the non-finite groups" if nonfinite else ""),
                          UserWarning, stacklevel=2)
        pruned = torch.zeros(self.an.num_groups, dtype=torch.bool)
        if picked:
            pruned[torch.tensor(picked)] = True
        report = PruneReport(step=self.num_prunes, requested=n, pruned=len(picked),
                             channels_before=before, channels_after=before,
                             group_scores=[float(gscore[g]) for g in picked], batches=self.num_batches,
                             nonfinite_groups=nonfinite)
        for name, info in self.an.layers.items():
            og = info.out_groups
            hit = _surgery.hit(og, pruned)
            if hit.any():
                idx = torch.nonzero(hit).flatten()
                report.pruned_channels[name] = idx.tolist()
                report.original_channels[name] = self._orig[name][idx].tolist()
        if picked:
            if self.mode == "compact":
                self._compact(pruned)
            else:
                self._alive &= ~pruned
                self._mask.build(self.an, self._modules, self._alive)
                self.apply_masks()
        after = self.layer_channels()
        report.layer_channels = {k: (layer_before[k], after[k]) for k in layer_before if layer_before[k] != after[k]}
        report.channels_after = self.num_channels()
        self.num_prunes += 1
        if not self.carry_scores:
            self._acc.reset()
        self.num_batches = 0
        self.history.append(report.to_dict())
        return report

    # ------------------------------------------------------------------------------- compaction
    def _compact(self, pruned: Tensor) -> None:
        carry = self.carry_scores and self._acc.acc is not None
        before = self._scorer.row_identity(self._orig) if carry else None
        keep_out = _surgery.compact(self.an, self._modules, pruned, self.optimizer, self.backend)
        for name, ko in keep_out.items():
            if ko is not None:
                self._orig[name] = self._orig[name][ko]
        self._analyse()
        self._alive = torch.ones(self.an.num_groups, dtype=torch.bool)
        if carry:   # the analysis renumbered the groups (and rows): the scores follow their channels
            self._acc.carry(match_rows(before, self._scorer.row_identity(self._orig)))

    # ------------------------------------------------------------------------------- masking
    @property
    def _masks(self) -> Dict[str, Dict[str, Tensor]]:
        return self._mask.masks

    def _mask_tensor(self, p: Tensor, t: Tensor) -> Tensor:
        return self._mask.mask_tensor(p, t)

    def apply_masks(self) -> None:
        """Zero the pruned channels of every parameter, buffer, gradient and optimizer state (mask
        mode; called after ``prune`` and after every ``optimizer.step``)."""
        self._mask.apply(self.optimizer)

    def remove_hooks(self) -> None:
        self._mask.remove_hooks()

    # ------------------------------------------------------------------------------- reinit
    def reinit(self, seed: Optional[int] = None, init_fn: Optional[Callable[[nn.Module], None]] = None) -> nn.Module:
        """A copy of the model with the same (pruned) architecture and fresh random weights:
        every module's ``reset_parameters()`` (BN running statistics reset too), then
        ``init_fn`` applied to every module if given. ``seed`` makes it reproducible (the global
        RNG is left untouched). In mask mode the pruned channels of the copy are zeroed."""
        new = copy.deepcopy(self.model)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            for m in new.modules():
                if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                    m.reset_parameters()
            if init_fn is not None:
                new.apply(init_fn)
        if self.mode == "mask" and self._masks:
            self._mask.apply(None, dict(new.named_modules()), tensors_only=True)
        for p in new.parameters():
            p.grad = None
        return new

    # ------------------------------------------------------------------------------- state
    def config(self) -> Dict[str, Any]:
        return {
            "tasks": list(self.tasks), "criterion": self.criterion, "exclude": list(self.exclude),
            "min_channels": self.min_channels, "round_to": self.round_to, "ranking": self.ranking,
            "layer_norm": self.layer_norm, "group_reduction": self.group_reduction, "scope": self.scope,
            "score_accumulation": self.score_accumulation, "carry_scores": self.carry_scores,
            "task_weights": self.task_weights, "step_weights": self.step_weights,
            "mode": self.mode, "seed": self.seed, "grad_mode": self.grad_mode, "backend": self.backend,
            "score_every": self.score_every,
            "sync_grads": self.sync_grads,
        }

    def state_dict(self) -> Dict[str, Any]:
        return {
            "version": 2,
            "config": self.config(),
            "architecture": architecture(self.model),
            "scores": {k: None if v is None else v.clone() for k, v in self._acc.state_dict().items()},
            "num_batches": self.num_batches,
            "total_batches": self.total_batches,
            "num_prunes": self.num_prunes,
            "history": copy.deepcopy(self.history),
            "rng": self.generator.get_state(),
            "alive": self._alive.clone(),
            "orig": {k: v.clone() for k, v in self._orig.items()},
        }

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        saved_mode = sd.get("config", {}).get("mode", self.mode)
        if saved_mode != self.mode:
            raise ValueError(f"the pruner state was saved in mode {saved_mode!r}, this pruner is in mode {self.mode!r}")
        arch = architecture(self.model)
        if sd["architecture"] != arch:
            diff = [k for k in set(arch) | set(sd["architecture"]) if arch.get(k) != sd["architecture"].get(k)]
            raise ValueError("the pruner state was saved for another architecture; differing layers: "
                             + ", ".join(sorted(diff)[:10]))
        if sd["alive"].numel() != self.an.num_groups:
            raise ValueError(f"the pruner state has {sd['alive'].numel()} channel groups, this model "
                             f"{self.an.num_groups} (another exclude list?)")
        self.num_batches = int(sd["num_batches"])
        self._acc.load_state_dict(sd.get("scores", {"acc": sd.get("acc")}), self.num_batches)
        self.total_batches = int(sd["total_batches"])
        self.num_prunes = int(sd["num_prunes"])
        self.history = copy.deepcopy(list(sd["history"]))
        self.generator.set_state(sd["rng"])
        self._alive = sd["alive"].clone()
        self._orig = {k: v.clone() for k, v in sd["orig"].items()}
        if self.mode == "mask":
            self._mask.build(self.an, self._modules, self._alive)
            self.apply_masks()

    def save(self, path, *, include_model: bool = True, extra: Optional[Dict[str, Any]] = None) -> None:
        """Atomically write the pruner state (and, by default, the model's architecture and state
        dict and the optimizer's state dict) to ``path`` (temporary file + ``os.replace``).
        ``extra`` (e.g. ``{"schedule": sched.state_dict(), "step": i}``) comes back as
        ``pruner.extra`` after :meth:`resume` / :meth:`load`."""
        ckpt: Dict[str, Any] = {"format": "mtlkernels.pruner/1", "pruner": self.state_dict(),
                                "extra": extra or {}, "fingerprint": fingerprint(self.model)}
        if include_model:
            ckpt["architecture"] = architecture(self.model)
            ckpt["state_dict"] = self.model.state_dict()
            if self.optimizer is not None:
                ckpt["optimizer"] = self.optimizer.state_dict()
        atomic_save(ckpt, path)

    @classmethod
    def load(cls, path, model: nn.Module, *, example_inputs, optimizer=None, **overrides) -> "MultiTaskPruner":
        """A pruner for an already restored ``model`` (and ``optimizer``), with the saved config
        (``overrides`` replace entries) and state."""
        ckpt = read_kind(path, ("pruner",), map_location="cpu")
        check_fingerprint(model, ckpt.get("fingerprint"), path)
        return cls._from_checkpoint(ckpt, model, example_inputs, optimizer, overrides, path)

    @classmethod
    def _from_checkpoint(cls, ckpt: dict, model: nn.Module, example_inputs, optimizer, overrides: dict,
                         path="<checkpoint>"):
        sd = ckpt["pruner"]
        cfg = dict(sd["config"])
        cfg.setdefault("scope", "filter")  # format-1 files predate group scoring: per-filter scores
        cfg.update(overrides)
        tasks = cfg.pop("tasks")
        crit = cfg.pop("criterion")
        pr = cls(model, tasks, crit, example_inputs=example_inputs, optimizer=optimizer, **cfg)
        try:
            pr.load_state_dict(sd)
        except ValueError as e:
            raise CheckpointError(f"{os.fspath(path)}: {e}") from e
        pr.extra = ckpt.get("extra", {})
        return pr

    @classmethod
    def resume(cls, path, constructor: Callable[[], nn.Module], *, example_inputs,
               optimizer_fn: Optional[Callable[[Any], torch.optim.Optimizer]] = None,
               map_location=None, **overrides) -> "MultiTaskPruner":
        """Rebuild everything from ``save(path)``: ``constructor()`` -> shrunk to the saved
        architecture -> saved weights; ``optimizer_fn(model.parameters())`` -> saved optimizer
        state; the pruner with its saved config and state. Use ``pruner.model`` and
        ``pruner.optimizer`` afterwards."""
        ckpt = read_kind(path, ("pruner",), map_location=map_location or "cpu")
        model = model_from_checkpoint(constructor, ckpt, path)
        ex = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
        if isinstance(ex, Tensor):
            model.to(ex.device)  # the optimizer must see the parameters on their final device
        opt = None
        if optimizer_fn is not None:
            opt = optimizer_fn(model.parameters())
            if "optimizer" in ckpt:
                opt.load_state_dict(ckpt["optimizer"])
        return cls._from_checkpoint(ckpt, model, example_inputs, opt, overrides, path)
