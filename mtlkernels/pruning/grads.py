"""Per-task gradients and the gradient left for the optimizer: shared by the driver
(:class:`.MultiTaskPruner`) and the Torch-Pruning interop."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["task_grads", "summed_loss_grads", "weighted_sum", "add_to_grad"]

Grads = List[Optional[Tensor]]


def task_grads(losses: Sequence[Optional[Tensor]], params: List[Tensor], retain_graph: bool) -> List[Grads]:
    """``[T][P]`` per-task gradients by T ``autograd.grad`` calls through one graph (``None`` where
    a task's loss is None or does not reach a parameter)."""
    live = [i for i, l in enumerate(losses) if l is not None]
    grads: List[Grads] = [[None] * len(params) for _ in losses]
    for k, i in enumerate(live):
        keep = retain_graph or k < len(live) - 1
        grads[i] = list(torch.autograd.grad(losses[i], params, retain_graph=keep, allow_unused=True))
    return grads


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
