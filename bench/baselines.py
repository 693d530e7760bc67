"""PyTorch baselines the kernels are measured against.

- ``reference``: :func:`mtlkernels.reference.filter_stats` (einsum per layer, written for clarity);
- ``vectorised``: a well-vectorised PyTorch version: per layer, the T gradients as one [F, T, K]
  tensor and three batched matrix products (bmm) for dot, gram and wg2;
- ``straightforward``: what a pruning script usually does: per layer, per task pair, flatten and
  ``cosine_similarity``, plus the Taylor and norm terms one by one.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from mtlkernels import reference


def reference_impl(weights, grads):
    return reference.filter_stats(weights, grads)


def vectorised(weights, grads):
    T = len(grads) // len(weights)
    outs = []
    for l, w in enumerate(weights):
        f = w.shape[0]
        w2 = w.reshape(f, 1, -1).float()                                          # [F, 1, K]
        g = torch.stack([x.reshape(f, -1) for x in grads[l * T:(l + 1) * T]], 1).float()  # [F, T, K]
        wg = g * w2
        outs.append((torch.bmm(g, w2.transpose(1, 2)).squeeze(2), torch.bmm(g, g.transpose(1, 2)),
                     w2.square().sum((1, 2)), w2.abs().sum((1, 2)), torch.bmm(wg, wg.transpose(1, 2))))
    return tuple(torch.cat([o[i] for o in outs]) for i in range(5))


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
