"""PyTorch baselines the kernels are measured against.

- ``vectorised``: the reference (einsum/bmm per layer), i.e. a well-vectorised PyTorch version;
- ``straightforward``: what a pruning script usually does: per layer, per task pair, flatten and
  ``cosine_similarity``, plus the Taylor and norm terms one by one.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from mtlkernels import reference


def vectorised(weights, grads):
    return reference.filter_stats(weights, grads)


def straightforward(weights, grads):
    T = len(grads) // len(weights)
    out = []
    for l, w in enumerate(weights):
        gs = [g.flatten(1).float() for g in grads[l * T:(l + 1) * T]]
        w2 = w.flatten(1).float()
        taylor = [((w2 * g).sum(1)) ** 2 for g in gs]
        cos = [F.cosine_similarity(gs[i], gs[j], dim=1) for i, j in itertools.combinations(range(T), 2)]
        out.append((taylor, cos, w2.norm(dim=1), w2.abs().sum(1)))
    return out
