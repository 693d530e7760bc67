"""Per-task gradients and the gradient left for the optimizer: shared by the driver
(:class:`.MultiTaskPruner`) and the Torch-Pruning interop."""
from __future__ import annotations

import warnings
from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["loss_or_none", "task_grads", "batched_task_grads", "summed_loss_grads", "weighted_sum",
           "add_to_grad", "grads_by_param"]

Grads = List[Optional[Tensor]]


def loss_or_none(task: str, v, warned: set) -> Optional[Tensor]:
    """A task's scalar loss, or None (with one warning per task in ``warned``) when it does not
    require grad: a detached loss would silently count as a zero gradient for that task."""
    if not isinstance(v, Tensor) or v.numel() != 1:
        raise ValueError(f"loss of task {task!r} must be a scalar tensor")
    if v.requires_grad:
        return v.reshape(())
    if task not in warned:
        warnings.warn(f"the loss of task {task!r} does not require grad (detached, or computed "
                      "under no_grad): it contributes no gradient and no score", UserWarning, stacklevel=5)
        warned.add(task)
    return None


def task_grads(losses: Sequence[Optional[Tensor]], params: List[Tensor], retain_graph: bool) -> List[Grads]:
    """``[T][P]`` per-task gradients by T ``autograd.grad`` calls through one graph (``None`` where
    a task's loss is None or does not reach a parameter)."""
    live = [i for i, l in enumerate(losses) if l is not None]
    grads: List[Grads] = [[None] * len(params) for _ in losses]
    for k, i in enumerate(live):
        keep = retain_graph or k < len(live) - 1
        grads[i] = list(torch.autograd.grad(losses[i], params, retain_graph=keep, allow_unused=True))
    return grads


def batched_task_grads(losses: Sequence[Optional[Tensor]], params: List[Tensor],
                       retain_graph: bool) -> List[Grads]:
    """The same as :func:`task_grads` in one ``is_grads_batched`` backward (vmap); raises
    ``RuntimeError`` where the graph does not support it."""
    live = [i for i, l in enumerate(losses) if l is not None]
    stacked = torch.stack([losses[i] for i in live])
    eye = torch.eye(len(live), dtype=stacked.dtype, device=stacked.device)
    gb = torch.autograd.grad(stacked, params, grad_outputs=eye, is_grads_batched=True,
                             retain_graph=retain_graph, allow_unused=True)
    grads: List[Grads] = [[None] * len(params) for _ in losses]
    for j, i in enumerate(live):
        grads[i] = [None if g is None else g[j] for g in gb]
    return grads


def grads_by_param(params: List[Tensor], grads: List[Grads]) -> Callable[[Tensor], List[Tensor]]:
    """``grad_of(p)``: the T per-task gradients of parameter ``p`` (zeros where a task does not
    reach it, or ``p`` is not among ``params``), for :meth:`.scoring.Scorer.statistics`."""
    index = {id(p): j for j, p in enumerate(params)}

    def grad_of(w: Tensor) -> List[Tensor]:
        j = index.get(id(w))
        return [torch.zeros_like(w) if j is None or g[j] is None else g[j] for g in grads]

    return grad_of


def summed_loss_grads(losses: Sequence[Optional[Tensor]], weights: Sequence[float], params: List[Tensor],
                      retain_graph: bool) -> Grads:
    """``[P]`` gradients of ``sum_t w_t L_t`` in one backward pass."""
    live = [(w, l) for w, l in zip(weights, losses) if l is not None]
    if not live:
        return [None] * len(params)
    total = sum(w * l for w, l in live)
    return list(torch.autograd.grad(total, params, retain_graph=retain_graph, allow_unused=True))


@torch.no_grad()
def weighted_sum(params: List[Tensor], grads: List[Grads], weights: Sequence[float],
                 mask: Optional[Callable[[Tensor, Tensor], Tensor]] = None) -> Grads:
    """``sum_t w_t grads[t][j]`` per parameter (``None`` where no task reaches it), masked like the
    parameter by ``mask(p, g)`` when given: what ``backward`` of the weighted summed loss leaves."""
    out: Grads = []
    for j, p in enumerate(params):
        tot = None
        for g, w in zip(grads, weights):
            if g[j] is not None:
                tot = g[j] * w if tot is None else tot.add_(g[j], alpha=w)
        out.append(tot if tot is None or mask is None else mask(p, tot))
    return out


@torch.no_grad()
def add_to_grad(params: List[Tensor], tots: Grads) -> None:
    """``p.grad += tot`` (``p.grad = tot`` where it is None)."""
    for p, tot in zip(params, tots):
        if tot is not None:
            p.grad = tot.detach() if p.grad is None else p.grad.add_(tot)
