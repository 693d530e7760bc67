"""Fake (meta) kernels of the compiled ops, so ``torch.compile(fullgraph=True)`` and
``torch.library.opcheck`` can trace them without running a kernel. Imported once the extension
has registered the schemas (``mtlkernels._backend``).

Each checks its arguments like the C++ op does (``mtlkernels._rawcheck``): besides tracing, the
dispatcher runs these for a call that mixes a meta tensor with CPU tensors, which must raise rather
than return uninitialised CPU memory."""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor

from . import _rawcheck


@torch.library.register_fake("mtlkernels::filter_stats")
def _filter_stats_fake(weights: Sequence[Tensor], grads: Sequence[Tensor]):
    T = _rawcheck.filter_stats(weights, grads)
    F = sum(w.shape[0] for w in weights)
    w0 = weights[0]
    f32 = dict(dtype=torch.float32)
    return (w0.new_empty((F, T), **f32), w0.new_empty((F, T, T), **f32), w0.new_empty((F,), **f32),
            w0.new_empty((F,), **f32), w0.new_empty((F, T, T), **f32))


@torch.library.register_fake("mtlkernels::channel_contrib")
def _channel_contrib_fake(activation: Tensor, grad: Tensor) -> Tensor:
    _rawcheck.channel_contrib(activation, grad)
    return activation.new_empty((activation.shape[1],), dtype=torch.float32)


@torch.library.register_fake("mtlkernels::gather")
def _gather_fake(xs, idx1, idx2, dim1, dim2) -> List[Tensor]:
    _rawcheck.gather(xs, idx1, idx2, dim1, dim2)
    return [x.new_empty(_rawcheck.gather_out_shape(x, a, b, c, d)) for x, a, b, c, d in zip(xs, idx1, idx2, dim1, dim2)]
