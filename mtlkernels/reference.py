"""Pure-PyTorch reference implementations of every mtlkernels op.

These are the oracle the tests compare every compiled backend (C++ CPU, CUDA, Triton) against,
and the fallback the public API uses when no compiled backend is available. They are written to be
read, not to be fast: each is the formula of the op contract, computed with float32 accumulation
(``float64`` when given float64 inputs, which the tests use for the oracle).

The contract shared by every backend (see ``mtlkernels.ops`` for the validated public wrappers):

``filter_stats(weights, grads)``
    ``weights``: list of L tensors, layer ``l`` shaped ``[F_l, ...]`` (``K_l`` = product of the
    other dims). ``grads``: either one stacked ``[T, F_l, ...]`` tensor per layer (``grads[l][t]``
    is task ``t``'s gradient of ``weights[l]``), or a flat list of ``L * T`` tensors, layer-major
    (``grads[l * T + t]``, shaped like ``weights[l]``); :func:`grads_form` tells them apart. Returns five float32 tensors whose rows
    run over every filter of every layer (``F = sum F_l``):
    ``dot [F, T]``, ``gram [F, T, T]``, ``wsq [F]``, ``wabs [F]``, ``wg2 [F, T, T]``.

``channel_contrib(activation, grad)``
    ``activation`` and ``grad`` shaped ``[N, C, *]``; returns float32 ``[C]`` with
    ``contrib[c] = sum_{n, spatial} activation * grad``, the products and the sum in float64 (exact
    products of float32/16/bf16 values) and rounded to float32 once: an overflow is decided by the
    sum, never by a product or a partial sum, so every backend gives the same ``inf``.

``gather(xs, idx1, idx2, dim1, dim2)``
    For each tensor ``x = xs[i]``: ``x.index_select(dim1[i], idx1[i])`` then
    ``.index_select(dim2[i], idx2[i])`` (a ``None`` index keeps that dim whole), returned as a new
    contiguous tensor of ``x``'s dtype.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["filter_stats", "channel_contrib", "gather", "acc_dtype", "grads_form"]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation/output dtype of the contract: float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _filter_stats_layer(w: Tensor, gs: Sequence[Tensor]):
    acc = acc_dtype(w.dtype)
    f = w.shape[0]
    w2 = w.reshape(f, -1).to(acc)                                  # [F, K]
    g = torch.stack([x.reshape(f, -1) for x in gs]).to(acc)        # [T, F, K]
    dot = torch.einsum("fk,tfk->ft", w2, g)
    gram = torch.einsum("ifk,jfk->fij", g, g)
    wsq = (w2 * w2).sum(1)
    wabs = w2.abs().sum(1)
    wg = g * w2.unsqueeze(0)                                       # W * G_t
    wg2 = torch.einsum("ifk,jfk->fij", wg, wg)                     # sum W^2 G_i G_j
    return dot, gram, wsq, wabs, wg2


def grads_form(weights: Sequence[Tensor], grads: Sequence[Tensor]) -> Tuple[int, bool]:
    """``(T, stacked)`` of a ``filter_stats`` call: stacked when there is one tensor per layer with a
    task dim in front of the weight's dims (an unstacked call with T=1 has grads shaped like the
    weights, so the forms never look alike), else ``T = len(grads) // L``. The C++ ops decide the
    same way (``csrc/common/tables.cpp``)."""
    if len(grads) == len(weights) and grads[0].dim() == weights[0].dim() + 1:
        return int(grads[0].shape[0]), True
    return len(grads) // max(len(weights), 1), False


def layer_grads(weights: Sequence[Tensor], grads: Sequence[Tensor]) -> List[Sequence[Tensor]]:
    """The T task gradients of each layer, in either form (a stack is a sequence of its tasks)."""
    num_tasks, stacked = grads_form(weights, grads)
    if stacked:
        return list(grads)
    return [grads[l * num_tasks:(l + 1) * num_tasks] for l in range(len(weights))]


def filter_stats(weights: Sequence[Tensor], grads: Sequence[Tensor]):
    """Per-filter multi-task statistics of many layers; see the module docstring."""
    parts = [_filter_stats_layer(w, gs) for w, gs in zip(weights, layer_grads(weights, grads))]
    return tuple(torch.cat([p[i] for p in parts]) for i in range(5))


def channel_contrib(activation: Tensor, grad: Tensor) -> Tensor:
    """``contrib[c] = sum over batch and spatial positions of activation * grad`` (float64 inside)."""
    prod = activation.to(torch.float64) * grad.to(torch.float64)
    dims = [0] + list(range(2, prod.dim()))
    return prod.sum(dim=dims).to(acc_dtype(activation.dtype))


def gather(
    xs: Sequence[Tensor],
    idx1: Sequence[Optional[Tensor]],
    idx2: Sequence[Optional[Tensor]],
    dim1: Sequence[int],
    dim2: Sequence[int],
):
    """Channel-gather of many tensors: ``index_select`` along two dims, one tensor at a time."""
    out = []
    for x, i1, i2, d1, d2 in zip(xs, idx1, idx2, dim1, dim2):
        y = x
        if i1 is not None:
            y = y.index_select(d1, i1)
        if i2 is not None:
            y = y.index_select(d2, i2)
        out.append(y.contiguous() if (i1 is not None or i2 is not None) else y.clone())
    return out
