"""Argument checks of the raw ops (``torch.ops.mtlkernels.*`` and ``torch.ops.mtlkernels.*_triton``)
that need no data: shapes, dtypes, devices, layouts, lengths.

They mirror the C++ ops' ``TORCH_CHECK``s (``csrc/common/tables.cpp``) and run

* before every Triton launch (``mtlkernels.triton_ops``): a Triton kernel reads whatever its
  pointers point at, so an int32 index, a gradient smaller than its weight or a non-contiguous
  weight would crash it or return garbage;
* in every fake (meta) kernel (``mtlkernels._fake`` and the Triton ops' fakes): the dispatcher
  sends a call that mixes a meta tensor with CPU tensors to the fake kernel, which would otherwise
  return uninitialised memory on the CPU.

Index *values* are checked by the kernels themselves (the CPU binding before its copy, the CUDA and
Triton kernels through an error word read back after the launch). Errors are ``RuntimeError``, like
``TORCH_CHECK``'s, and name the argument.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from . import reference

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Largest T of the compiled kernels (csrc/include/mtlkernels/common.h kMaxTasks).
MAX_TASKS = 16


def _require(ok: bool, op: str, msg: str) -> None:
    if not ok:
        raise RuntimeError(f"{op}: {msg}")


def _tensor(x, op: str, name: str) -> Tensor:
    _require(isinstance(x, Tensor), op, f"{name} must be a Tensor, got {type(x).__name__}")
    return x


def rows_dense(x: Tensor, size=None, stride=None) -> bool:
    """Row ``f`` is the ``K`` elements at ``f * K`` in some order: dims 1.. tile ``K`` densely in any
    permutation (contiguous, channels_last, ...) and dim 0 steps by ``K`` (the C++ ``rows_dense``).
    The statistics are sums within a row, so the order is free as long as W and every G_t share it."""
    size = x.shape if size is None else size
    stride = x.stride() if stride is None else stride
    k = 1
    for n in size[1:]:
        k *= n
    if size[0] > 1 and stride[0] != k:
        return False
    expect = 1
    for st, n in sorted((st, n) for st, n in zip(stride[1:], size[1:]) if n != 1):
        if st != expect:
            return False
        expect *= n
    return True


def same_layout(size, a, b) -> bool:
    """Equal strides wherever the size is > 1 (a size-1 dim's stride is never used)."""
    return all(x == y for n, x, y in zip(size, a, b) if n != 1)


def _grad(w: Tensor, l: int, g, k: int, stacked: bool, w0: Tensor, op: str) -> None:
    g = _tensor(g, op, f"grads[{k}]")
    size, stride = (g.shape[1:], g.stride()[1:]) if stacked else (g.shape, g.stride())
    after = " after its task dim" if stacked else ""
    _require(size == w.shape, op, f"grads[{k}] must have the shape of weights[{l}] {list(w.shape)}{after}, "
                                  f"got {list(g.shape)}")
    _require(same_layout(size, stride, w.stride()), op,
             f"grads[{k}] must have the strides of weights[{l}] {list(w.stride())}{after} (same element "
             f"order), got {list(g.stride())}")
    _require(g.dtype == w0.dtype and g.device == w0.device, op,
             f"grads[{k}] ({g.dtype} on {g.device}) differs in dtype or device from "
             f"weights[0] ({w0.dtype} on {w0.device})")


def filter_stats(weights: Sequence[Tensor], grads: Sequence[Tensor], op: str = "filter_stats") -> int:
    """Checks the arguments of ``filter_stats`` (either gradient form,
    :func:`mtlkernels.reference.grads_form`); returns T."""
    num_layers = len(weights)
    _require(num_layers > 0, op, "weights is empty")
    _require(len(grads) > 0 and len(grads) % num_layers == 0, op,
             f"grads must hold one [T, ...] stack or T tensors per weight (layer-major), got "
             f"{len(grads)} grads for {num_layers} weights")
    w0 = _tensor(weights[0], op, "weights[0]")
    _tensor(grads[0], op, "grads[0]")
    num_tasks, stacked = reference.grads_form(weights, grads)
    _require(1 <= num_tasks <= MAX_TASKS, op, f"T must be in 1..{MAX_TASKS}, got {num_tasks}")
    _require(w0.dtype in KERNEL_DTYPES, op,
             f"dtype must be float32, float16 or bfloat16, got {w0.dtype}")
    for l, w in enumerate(weights):
        w = _tensor(w, op, f"weights[{l}]")
        _require(w.dim() >= 1 and w.numel() > 0, op, f"weights[{l}] is empty")
        _require(w.dtype == w0.dtype and w.device == w0.device, op,
                 f"weights[{l}] ({w.dtype} on {w.device}) differs in dtype or device from "
                 f"weights[0] ({w0.dtype} on {w0.device})")
        _require(rows_dense(w), op, f"weights[{l}] must have dense rows (contiguous, channels_last, or "
                                    f"any layout whose row f is the K elements at f * K), got sizes "
                                    f"{list(w.shape)} and strides {list(w.stride())}")
        if stacked:
            g = _tensor(grads[l], op, f"grads[{l}]")
            _require(g.dim() == w.dim() + 1 and g.shape[0] == num_tasks, op,
                     f"grads[{l}] must be a [T={num_tasks}, ...] stack of weights[{l}]'s task "
                     f"gradients, got {list(g.shape)}")
            _grad(w, l, g, l, True, w0, op)
        else:
            for t in range(num_tasks):
                _grad(w, l, grads[l * num_tasks + t], l * num_tasks + t, False, w0, op)
    return num_tasks


def channel_contrib(a: Tensor, d: Tensor, op: str = "channel_contrib") -> None:
    a = _tensor(a, op, "activation")
    d = _tensor(d, op, "grad")
    _require(a.dim() == 3 and d.dim() == 3, op,
             f"expects [N, C, S] views, got activation {list(a.shape)} and grad {list(d.shape)}")
    _require(a.shape == d.shape, op, f"shapes differ: activation {list(a.shape)} vs grad {list(d.shape)}")
    _require(a.dtype in KERNEL_DTYPES and a.dtype == d.dtype, op,
             f"activation and grad must both be float32, float16 or bfloat16, got {a.dtype} and {d.dtype}")
    _require(a.device == d.device, op, f"activation is on {a.device} but grad on {d.device}")
    _require(a.numel() > 0, op, "empty input")


def gather(xs: Sequence[Tensor], idx1: Sequence[Optional[Tensor]], idx2: Sequence[Optional[Tensor]],
           dim1: Sequence[int], dim2: Sequence[int], op: str = "gather") -> None:
    n = len(xs)
    _require(n > 0, op, "xs is empty")
    _require(len(idx1) == n and len(idx2) == n and len(dim1) == n and len(dim2) == n, op,
             "idx1, idx2, dim1, dim2 must have one entry per tensor")
    x0 = _tensor(xs[0], op, "xs[0]")
    for i, x in enumerate(xs):
        x = _tensor(x, op, f"xs[{i}]")
        _require(x.is_contiguous(), op, f"xs[{i}] must be contiguous")
        _require(x.device == x0.device, op, f"xs[{i}] is on {x.device}, xs[0] on {x0.device}")
        _require(x.element_size() in (1, 2, 4, 8), op,
                 f"xs[{i}] has an element size of {x.element_size()} bytes (1, 2, 4 or 8 supported)")
        for name, idx, dim in (("idx1", idx1[i], dim1[i]), ("idx2", idx2[i], dim2[i])):
            if idx is None:
                continue
            idx = _tensor(idx, op, f"{name}[{i}]")
            _require(0 <= dim < x.dim(), op, f"dim {dim} of {name}[{i}] is out of range for xs[{i}] "
                                             f"with {x.dim()} dims")
            _require(idx.dtype == torch.int64 and idx.dim() == 1 and idx.is_contiguous(), op,
                     f"{name}[{i}] must be a contiguous 1-D int64 tensor, got {idx.dtype} of shape "
                     f"{list(idx.shape)}")
            _require(idx.device == x.device, op, f"{name}[{i}] is on {idx.device} but xs[{i}] on {x.device}")
        _require(idx1[i] is None or idx2[i] is None or dim1[i] != dim2[i], op,
                 f"dim1[{i}] == dim2[{i}] == {dim1[i]}: give two different dims")


def gather_out_shape(x: Tensor, i1: Optional[Tensor], i2: Optional[Tensor], d1: int, d2: int) -> list:
    """Output shape of one gather, for the fake kernels (a real call takes the shape of the output
    that the C++ table builder allocates, csrc/common/tables.cpp ``canonical_gather``)."""
    shape = list(x.shape)
    if i1 is not None:
        shape[d1] = i1.shape[0]
    if i2 is not None:
        shape[d2] = i2.shape[0]
    return shape
