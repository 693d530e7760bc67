"""Triton kernels of the mtlkernels ops (the ``"triton"`` backend).

Same contract as :mod:`mtlkernels.reference` (see there); :mod:`mtlkernels.ops` validates and makes
the inputs the kernels cannot read in place contiguous (``filter_stats`` reads any layout with dense
rows, e.g. channels_last, and stacked ``[T, F, ...]`` gradients; ``channel_contrib`` takes strided
``[N, C, S]`` views). The raw ops (``torch.ops.mtlkernels.*_triton``) check shapes, dtypes, devices
and layouts again before any launch (:mod:`mtlkernels._rawcheck`, like the C++ ops), and the gather kernel checks its index
values (an out-of-range index is never loaded from; it sets an error word that is read back, and the
op raises). Every launch, and the copy of its table, runs under ``torch.cuda.device`` of the
tensors: Triton launches on the current device and its current stream, and the table copy goes to
the destination device's current stream, which is then the launch's stream.

Design
------
``filter_stats`` and ``gather`` work on *many* tensors (every prunable layer of a network) and each
runs as ONE kernel launch, driven by a small int64 table built on the host and copied to the device
once per call:

* ``filter_stats``: per layer ``(weight address, K, first output row)``, per (layer, task) the
  gradient address, then a ``row -> layer`` map. One program per filter row (of the whole network):
  it looks its layer up, loads the weight/gradient base addresses from the table and casts them with
  ``.to(tl.pointer_type(...))``, then streams the row in ``BLOCK_K`` chunks, holding all T task
  gradients as a ``[TP, BLOCK_K]`` tile (T padded to the power of two TP, the pad masked) and
  accumulating ``dot``, the T x T ``gram`` and ``wg2`` (broadcast products ``g[:, None, :] *
  g[None, :, :]``, rather than ``tl.dot``, whose tiles are at least 16 wide: for small T they
  would be mostly padding; not measured against each other), ``wsq`` and ``wabs``, all in float32,
  element-wise over the chunk ([TP, TP, BLOCK_K] partial sums) and reduced over K once at the end.

  Why a pointer table rather than a flat gradient bank (``torch.cat`` of every gradient): the bank
  would copy all of the user's gradients (the size of the model times T) just to give the kernel one
  base pointer; the table is a few hundred bytes and the kernel reads the gradients where autograd
  left them.

* ``gather``: each tensor is canonicalised on the host to five dims ``[A, D1, B, D2, C]`` (the two
  gathered dims and the products of the dims around them; a missing index is a size-1 dummy dim or a
  ``None`` index, flagged in the table). A block table maps program id -> (tensor, first output
  element); a tensor table holds source/destination/index addresses and the canonical sizes. The
  gather is a copy, so it is dtype-agnostic: every tensor is reinterpreted as the integer dtype of
  its width (``uint8``/``int16``/``int32``/``int64``, so ``bool``, ``float16``, ``float64``, ...
  all work) and the outputs are viewed back. A kernel is specialised on its pointer element type,
  so there is one launch per distinct element size among the tensors (usually one or two).

* ``channel_contrib``: the ``[N, C, S]`` views are read through their strides (NCHW and
  channels_last without a copy) in ``[BLOCK_C, BLOCK_P]`` tiles; the ``N * S`` positions are split
  over several programs that each write a row of a float64 partial buffer ``[splits, C]``, summed
  afterwards: deterministic (no atomics). Products and sums are float64 (exact products of the
  inputs; FMA fusion changes nothing), rounded to float32 once at the end, so an overflow gives
  the same inf as on every other backend.

Each op is registered with :func:`torch.library.triton_op` (``mtlkernels::filter_stats_triton``,
``mtlkernels::channel_contrib_triton``, ``mtlkernels::gather_triton``) and launches its kernels
through :func:`torch.library.wrap_triton`. Because the pointer tables need real addresses
(``data_ptr()``), which FakeTensors do not have, the ops are kept *opaque* to torch.compile: a
shape-only fake implementation is registered and the functional decomposition that ``triton_op``
would do is turned off, so a compiled graph (``fullgraph=True`` works) calls the op as one node.

On CPU tensors the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``, read when this
module is imported, as ``@triton.jit`` does); on CPU tensors without it the ops fall back to
:mod:`mtlkernels.reference`. Block sizes are chosen by small heuristics (no autotuning) and the
kernels use no device-specific features, so they also run under the interpreter. The knobs are in
:data:`TUNE` (untuned beyond a first look).

Measured once on an H200 (torch 2.11, Triton 3.6; before the table copy became asynchronous and
before ``filter_stats`` moved its reductions over K out of the loop, so not current): a
ResNet-50-like list of 64 layers (38,400 filters), T=4 float32: the whole public call 1.9 ms against
15 ms for the reference (T=16: 9.7 against 15 ms); ``channel_contrib`` of ``[32, 256, 28, 28]``
float32: 0.18 ms NCHW, 0.07 ms channels_last, against 0.04/0.06 ms for PyTorch's fused reduction;
``gather_many`` of the 64 layers: 2.9 ms against 2.3 ms (both dominated by host-side work).
"""
from __future__ import annotations

import contextlib
import os
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

import triton
import triton.language as tl

from . import _rawcheck, reference

__all__ = ["filter_stats", "channel_contrib", "gather", "INTERPRET"]

#: Whether the kernels were decorated under the Triton interpreter (fixed at import).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# =================================================================================== kernels
@triton.jit
def _filter_stats_kernel(
    tab_ptr,        # int64 table: [L * 3 layer rows | L * T grad addresses | F row->layer]
    witness_ptr,    # any weight: gives the element type of the table's addresses
    dot_ptr, gram_ptr, wsq_ptr, wabs_ptr, wg2_ptr,
    T, G_OFF, R_OFF,
    BLOCK_K: tl.constexpr,
    TP: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    elem_ptr_ty = witness_ptr.dtype
    layer = tl.load(tab_ptr + R_OFF + r)
    w_addr = tl.load(tab_ptr + layer * 3)
    K = tl.load(tab_ptr + layer * 3 + 1)
    row0 = tl.load(tab_ptr + layer * 3 + 2)
    row_off = (r - row0) * K
    w_row = w_addr.to(elem_ptr_ty) + row_off

    t = tl.arange(0, TP)
    t_mask = t < T
    g_addr = tl.load(tab_ptr + G_OFF + layer * T + t, mask=t_mask, other=0)
    g_rows = g_addr.to(elem_ptr_ty) + row_off                          # [TP] pointers

    # Element-wise partial sums over the K chunks, reduced over BLOCK_K once after the loop: a
    # reduction inside the loop would cross threads (and warps) on every chunk.
    dot_acc = tl.zeros([TP, BLOCK_K], dtype=tl.float32)
    gram_acc = tl.zeros([TP, TP, BLOCK_K], dtype=tl.float32)
    wg2_acc = tl.zeros([TP, TP, BLOCK_K], dtype=tl.float32)
    wsq_acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    wabs_acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K
        w = tl.load(w_row + k, mask=k_mask, other=0.0).to(tl.float32)                 # [BK]
        g = tl.load(g_rows[:, None] + k[None, :], mask=t_mask[:, None] & k_mask[None, :],
                    other=0.0).to(tl.float32)                                          # [TP, BK]
        wg = g * w[None, :]
        dot_acc += wg
        gram_acc += g[:, None, :] * g[None, :, :]
        wg2_acc += wg[:, None, :] * wg[None, :, :]
        wsq_acc += w * w
        wabs_acc += tl.abs(w)

    tl.store(dot_ptr + r * T + t, tl.sum(dot_acc, axis=1), mask=t_mask)
    tt = t[:, None] * T + t[None, :]
    tt_mask = t_mask[:, None] & t_mask[None, :]
    tl.store(gram_ptr + r * T * T + tt, tl.sum(gram_acc, axis=2), mask=tt_mask)
    tl.store(wg2_ptr + r * T * T + tt, tl.sum(wg2_acc, axis=2), mask=tt_mask)
    tl.store(wsq_ptr + r, tl.sum(wsq_acc, axis=0))
    tl.store(wabs_ptr + r, tl.sum(wabs_acc, axis=0))


@triton.jit
def _channel_contrib_kernel(
    a_ptr, d_ptr, part_ptr,         # part: float64 [splits, C]
    C, S, P, CHUNK,
    a_sn, a_sc, a_ss, d_sn, d_sc, d_ss,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    c64 = c.to(tl.int64)
    a_c = c64 * a_sc
    d_c = c64 * d_sc
    p_start = split.to(tl.int64) * CHUNK
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float64)
    for p0 in range(0, CHUNK, BLOCK_P):
        p = p_start + p0 + tl.arange(0, BLOCK_P).to(tl.int64)
        p_mask = (p < P) & (p0 + tl.arange(0, BLOCK_P) < CHUNK)
        n = p // S
        s = p - n * S
        mask = c_mask[:, None] & p_mask[None, :]
        a = tl.load(a_ptr + a_c[:, None] + (n * a_sn + s * a_ss)[None, :], mask=mask, other=0.0)
        d = tl.load(d_ptr + d_c[:, None] + (n * d_sn + s * d_ss)[None, :], mask=mask, other=0.0)
        acc += a.to(tl.float32).to(tl.float64) * d.to(tl.float32).to(tl.float64)
    tl.store(part_ptr + split.to(tl.int64) * C + c, tl.sum(acc, axis=1), mask=c_mask)


# Tensor table columns of the gather (int64), in the order _gather_impl writes them; _G_ID is the
# tensor's position in the call (what an index error reports).
_G_SRC, _G_DST, _G_IDX1, _G_IDX2, _G_A, _G_D1, _G_B, _G_D2, _G_C, _G_O1, _G_O2, _G_ID = range(12)
_G_COLS = 12


@triton.jit
def _gather_kernel(
    blocks_ptr,     # int64 [num_blocks, 2]: (tensor id, first output element)
    tensors_ptr,    # int64 [num_tensors, _G_COLS]: see _G_* columns
    witness_ptr,    # any source tensor of this launch: gives the element type
    err_ptr,        # int64 [1]: set to _G_ID + 1 by an out-of-range index
    COLS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    tid = tl.load(blocks_ptr + pid * 2)
    start = tl.load(blocks_ptr + pid * 2 + 1)
    row = tensors_ptr + tid * COLS
    elem_ptr_ty = witness_ptr.dtype
    src = tl.load(row + 0).to(elem_ptr_ty)
    dst = tl.load(row + 1).to(elem_ptr_ty)
    idx1_addr = tl.load(row + 2)
    idx2_addr = tl.load(row + 3)
    A = tl.load(row + 4)
    D1 = tl.load(row + 5)
    B = tl.load(row + 6)
    D2 = tl.load(row + 7)
    C = tl.load(row + 8)
    O1 = tl.load(row + 9)
    O2 = tl.load(row + 10)
    tensor_id = tl.load(row + 11)
    total = A * O1 * B * O2 * C

    e = start + tl.arange(0, BLOCK).to(tl.int64)
    mask = e < total
    # output canonical layout [A, O1, B, O2, C]
    c = e % C
    rest = e // C
    o2 = rest % O2
    rest = rest // O2
    b = rest % B
    rest = rest // B
    o1 = rest % O1
    a = rest // O1
    # a null index address means "keep the dim whole" (identity)
    has1 = (e * 0 + idx1_addr) != 0     # broadcast the flag to the block
    has2 = (e * 0 + idx2_addr) != 0
    idx1 = idx1_addr.to(tl.pointer_type(tl.int64))
    idx2 = idx2_addr.to(tl.pointer_type(tl.int64))
    i1 = tl.load(idx1 + o1, mask=mask & has1, other=0)
    i2 = tl.load(idx2 + o2, mask=mask & has2, other=0)
    i1 = tl.where(has1, i1, o1)
    i2 = tl.where(has2, i2, o2)
    # index values are not trusted: a bad one is never loaded from, and flags the call instead
    ok = (i1 >= 0) & (i1 < D1) & (i2 >= 0) & (i2 < D2)
    tl.store(err_ptr + e * 0, e * 0 + tensor_id + 1, mask=mask & ~ok)
    src_off = (((a * D1 + i1) * B + b) * D2 + i2) * C + c
    v = tl.load(src + src_off, mask=mask & ok)
    tl.store(dst + e, v, mask=mask)


# =================================================================================== host side
#: Block-size heuristic knobs (no autotuning; the benchmarks may change them).
TUNE = {
    "fs_max_block_k": 128,   # filter_stats: K chunk ...
    "fs_tile": 4096,         # ... with TP * TP * BLOCK_K <= fs_tile (the [TP, TP, BK] products)
    "cc_max_block_c": 32,    # channel_contrib tile [BLOCK_C, BLOCK_P] ...
    "cc_max_block_p": 128,
    "cc_tile": 2048,         # ... with BLOCK_C * BLOCK_P <= cc_tile (float64 accumulators)
    "gather_block": 1024,    # gather: output elements per program
    "fs_num_warps": 4,
    "cc_num_warps": 4,
    "gather_num_warps": 4,
}


def _to_device(host: Tensor, device: torch.device) -> Tensor:
    """The host table on the device: one asynchronous copy from pinned memory on CUDA."""
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def _device_guard(device: torch.device):
    """The tensors' device made current for a launch and its table copy (a no-op off CUDA)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _use_reference(device: torch.device) -> bool:
    return device.type == "cpu" and not INTERPRET


def _empty_stats(f: int, t: int, device) -> Tuple[Tensor, ...]:
    kw = dict(dtype=torch.float32, device=device)
    return (torch.empty(f, t, **kw), torch.empty(f, t, t, **kw), torch.empty(f, **kw),
            torch.empty(f, **kw), torch.empty(f, t, t, **kw))


def _task_grad_addrs(weights: List[Tensor], grads: List[Tensor], num_tasks: int) -> List[int]:
    """Address of every (layer, task) gradient, layer-major, in either gradient form: task t of a
    stack is at its base + t * stride(0) elements (no unbind, no copy)."""
    if not reference.grads_form(weights, grads)[1]:
        return [g.data_ptr() for g in grads]
    addrs: List[int] = []
    for g in grads:
        step = g.stride(0) * g.element_size()
        addrs += [g.data_ptr() + t * step for t in range(num_tasks)]
    return addrs


def _filter_stats_impl(weights: List[Tensor], grads: List[Tensor]) -> List[Tensor]:
    device = weights[0].device
    if _use_reference(device):
        return list(reference.filter_stats(weights, grads))
    num_layers = len(weights)
    num_tasks, _ = reference.grads_form(weights, grads)
    sizes = [int(w.shape[0]) for w in weights]
    num_rows = sum(sizes)
    outs = _empty_stats(num_rows, num_tasks, device)
    # host table: [layer rows (w address, K, first row) | grad addresses | row -> layer]
    layer_rows: List[int] = []
    row0 = 0
    max_k = 1
    for l, w in enumerate(weights):
        k = w.numel() // sizes[l]
        max_k = max(max_k, k)
        layer_rows += [w.data_ptr(), k, row0]
        row0 += sizes[l]
    grad_addrs = _task_grad_addrs(weights, grads, num_tasks)
    row_layer = torch.repeat_interleave(torch.arange(num_layers, dtype=torch.int64),
                                        torch.tensor(sizes, dtype=torch.int64))
    host = torch.cat([torch.tensor(layer_rows + grad_addrs, dtype=torch.int64), row_layer])
    tab = _to_device(host, device)
    tp = _next_pow2(num_tasks)
    # the two [TP, TP, BLOCK_K] partial sums live in registers across the loop: keep TP * TP * BLOCK_K
    # around 4K elements (64 registers per thread at 4 warps)
    block_k = max(8, min(TUNE["fs_max_block_k"], TUNE["fs_tile"] // (tp * tp), _next_pow2(max_k)))
    torch.library.wrap_triton(_filter_stats_kernel)[(num_rows,)](
        tab, weights[0], *outs,
        num_tasks, 3 * num_layers, 3 * num_layers + len(grad_addrs),
        BLOCK_K=block_k, TP=tp, num_warps=TUNE["fs_num_warps"],
    )
    return list(outs)


def _channel_contrib_impl(a3: Tensor, d3: Tensor) -> Tensor:
    device = a3.device
    if _use_reference(device):
        return reference.channel_contrib(a3, d3)
    n, c, s = (int(v) for v in a3.shape)
    positions = n * s
    block_c = min(TUNE["cc_max_block_c"], _next_pow2(c))
    block_p = max(16, min(TUNE["cc_max_block_p"], _next_pow2(positions), TUNE["cc_tile"] // block_c))
    c_blocks = triton.cdiv(c, block_c)
    # enough programs to fill the device (4 per SM), each with at least 4 tiles of positions
    target = 4 * (torch.cuda.get_device_properties(device).multi_processor_count
                  if device.type == "cuda" else 16)
    splits = max(1, min(triton.cdiv(target, c_blocks), triton.cdiv(positions, 4 * block_p), 256))
    chunk = triton.cdiv(triton.cdiv(positions, splits), block_p) * block_p
    splits = triton.cdiv(positions, chunk)
    part = torch.empty(splits, c, dtype=torch.float64, device=device)
    torch.library.wrap_triton(_channel_contrib_kernel)[(c_blocks, splits)](
        a3, d3, part, c, s, positions, chunk,
        *a3.stride(), *d3.stride(),
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=TUNE["cc_num_warps"],
    )
    return part.sum(0).to(torch.float32)  # the one rounding to float32


def _canonical(x: Tensor, i1: Optional[Tensor], i2: Optional[Tensor], d1: int, d2: int):
    """``[A, D1, B, D2, C]`` sizes, index tensors and output shape of one gather."""
    shape = list(x.shape)
    nd = len(shape)
    if nd == 0:
        return (1, 1, 1, 1, 1), None, None, (1, 1), []
    if i1 is None and i2 is None:
        d_lo, d_hi, j_lo, j_hi = 0, nd - 1, None, None
    elif i2 is None:
        d_lo, j_lo, d_hi, j_hi = d1, i1, None, None
    elif i1 is None:
        d_lo, j_lo, d_hi, j_hi = d2, i2, None, None
    elif d1 < d2:
        d_lo, j_lo, d_hi, j_hi = d1, i1, d2, i2
    else:
        d_lo, j_lo, d_hi, j_hi = d2, i2, d1, i1

    def prod(v):
        out = 1
        for e in v:
            out *= int(e)
        return out

    out_shape = list(shape)
    if j_lo is not None:
        out_shape[d_lo] = int(j_lo.numel())
    if j_hi is not None:
        out_shape[d_hi] = int(j_hi.numel())
    if d_hi is None:            # one index: a size-1 dummy dim for the other
        sizes = (prod(shape[:d_lo]), shape[d_lo], prod(shape[d_lo + 1:]), 1, 1)
        outs = (out_shape[d_lo], 1)
    elif j_lo is None:          # no index at all: a plain copy
        sizes = (1, 1, 1, 1, prod(shape))
        outs = (1, 1)
    else:
        sizes = (prod(shape[:d_lo]), shape[d_lo], prod(shape[d_lo + 1:d_hi]), shape[d_hi],
                 prod(shape[d_hi + 1:]))
        outs = (out_shape[d_lo], out_shape[d_hi])
    return tuple(int(v) for v in sizes), j_lo, j_hi, outs, out_shape


def _gather_impl(xs: List[Tensor], idx1: List[Optional[Tensor]], idx2: List[Optional[Tensor]],
                 dim1: List[int], dim2: List[int]) -> List[Tensor]:
    device = xs[0].device
    if _use_reference(device):
        return list(reference.gather(xs, idx1, idx2, dim1, dim2))
    outs: List[Optional[Tensor]] = [None] * len(xs)
    err = torch.zeros(1, dtype=torch.int64, device=device)
    by_size = {}
    for i, x in enumerate(xs):
        by_size.setdefault(x.element_size(), []).append(i)
    for esize, members in sorted(by_size.items()):   # one launch per element size
        int_dtype = _INT_OF_SIZE[esize]
        tensor_rows: List[int] = []
        block_rows: List[int] = []
        totals = []
        prepared = []
        for i in members:
            x = xs[i]
            sizes, j_lo, j_hi, (o1, o2), out_shape = _canonical(x, idx1[i], idx2[i], dim1[i], dim2[i])
            src = x.view(int_dtype) if x.dim() else x.reshape(1).view(int_dtype)
            dst = torch.empty(out_shape, dtype=int_dtype, device=device)
            a, d1, b, d2, c = sizes
            tensor_rows += [src.data_ptr(), dst.data_ptr(),
                            0 if j_lo is None else j_lo.data_ptr(),
                            0 if j_hi is None else j_hi.data_ptr(),
                            a, d1, b, d2, c, o1, o2, i]
            totals.append(a * o1 * b * o2 * c)
            prepared.append((i, src, dst))
        block = max(16, min(TUNE["gather_block"], _next_pow2(max(totals))))
        for tid, total in enumerate(totals):
            for start in range(0, total, block):
                block_rows += [tid, start]
        table = _to_device(torch.tensor(tensor_rows + block_rows, dtype=torch.int64), device)
        tensors_tab = table[:len(tensor_rows)]
        blocks_tab = table[len(tensor_rows):]
        if block_rows:  # all outputs of this size may be empty
            torch.library.wrap_triton(_gather_kernel)[(len(block_rows) // 2,)](
                blocks_tab, tensors_tab, prepared[0][1], err, COLS=_G_COLS, BLOCK=block,
                num_warps=TUNE["gather_num_warps"],
            )
        for i, _, dst in prepared:
            outs[i] = dst.view(xs[i].dtype)
    # Waits for the kernels on CUDA (a sync per call): only the device knows the index values.
    bad = int(err.item())
    if bad:
        raise RuntimeError(f"gather_triton: an index of xs[{bad - 1}] (idx1[{bad - 1}] or idx2[{bad - 1}]) "
                           "is out of range for its dim")
    return outs  # type: ignore[return-value]


def _via_host(fn, device: torch.device, *args):
    """Under the interpreter the table addresses are read as host memory: run on CPU copies."""
    def cpu(v):
        if isinstance(v, Tensor):
            return v.cpu()
        if isinstance(v, list):
            return [cpu(e) for e in v]
        return v

    out = fn(*[cpu(a) for a in args])
    return [o.to(device) for o in out] if isinstance(out, list) else out.to(device)


# =================================================================================== custom ops
def _run(impl, device: torch.device, *args):
    with _device_guard(device):
        if INTERPRET and device.type != "cpu":
            return _via_host(impl, device, *args)
        return impl(*args)


@torch.library.triton_op("mtlkernels::filter_stats_triton", mutates_args=())
def _filter_stats_op(weights: List[Tensor], grads: List[Tensor]) -> List[Tensor]:
    _rawcheck.filter_stats(weights, grads, op="filter_stats_triton")
    return _run(_filter_stats_impl, weights[0].device, weights, grads)


@torch.library.triton_op("mtlkernels::channel_contrib_triton", mutates_args=())
def _channel_contrib_op(a3: Tensor, d3: Tensor) -> Tensor:
    _rawcheck.channel_contrib(a3, d3, op="channel_contrib_triton")
    return _run(_channel_contrib_impl, a3.device, a3, d3)


@torch.library.triton_op("mtlkernels::gather_triton", mutates_args=())
def _gather_op(xs: List[Tensor], idx1: List[Optional[Tensor]], idx2: List[Optional[Tensor]],
               dim1: List[int], dim2: List[int]) -> List[Tensor]:
    _rawcheck.gather(xs, idx1, idx2, dim1, dim2, op="gather_triton")
    return _run(_gather_impl, xs[0].device, xs, idx1, idx2, dim1, dim2)


# Shape-only fake implementations (the real ones read data_ptr(), which FakeTensors lack), with
# the real ones' argument checks ...
@_filter_stats_op.register_fake
def _(weights, grads):
    num_tasks = _rawcheck.filter_stats(weights, grads, op="filter_stats_triton")
    rows = sum(int(w.shape[0]) for w in weights)
    return list(_empty_stats(rows, num_tasks, weights[0].device))


@_channel_contrib_op.register_fake
def _(a3, d3):
    _rawcheck.channel_contrib(a3, d3, op="channel_contrib_triton")
    return a3.new_empty(a3.shape[1], dtype=torch.float32)


@_gather_op.register_fake
def _(xs, idx1, idx2, dim1, dim2):
    _rawcheck.gather(xs, idx1, idx2, dim1, dim2, op="gather_triton")
    return [x.new_empty(_canonical(x, i1, i2, d1, d2)[4]) for x, i1, i2, d1, d2
            in zip(xs, idx1, idx2, dim1, dim2)]


# ... and no functional decomposition: torch.compile keeps each op as one opaque graph node.
def _keep_opaque(mode, op, types, args, kwargs):
    return mode.__torch_dispatch__(op, types, args, kwargs)


try:
    from torch._subclasses.functional_tensor import FunctionalTensorMode as _FTM

    for _op in (_filter_stats_op, _channel_contrib_op, _gather_op):
        _op.register_torch_dispatch(_FTM, _keep_opaque)
except Exception:  # pragma: no cover - older torch without this hook
    pass


# =================================================================================== public entry
def filter_stats(weights: Sequence[Tensor], grads: Sequence[Tensor]) -> Tuple[Tensor, ...]:
    """Reference contract of :func:`mtlkernels.reference.filter_stats`, one Triton launch."""
    return tuple(torch.ops.mtlkernels.filter_stats_triton(list(weights), list(grads)))


def channel_contrib(a3: Tensor, d3: Tensor) -> Tensor:
    """``contrib[c] = sum_{n, s} a3[n, c, s] * d3[n, c, s]`` of two strided ``[N, C, S]`` views."""
    return torch.ops.mtlkernels.channel_contrib_triton(a3, d3)


def gather(xs: Sequence[Tensor], idx1: Sequence[Optional[Tensor]], idx2: Sequence[Optional[Tensor]],
           dim1: Sequence[int], dim2: Sequence[int]) -> List[Tensor]:
    """Reference contract of :func:`mtlkernels.reference.gather`, one launch per element size."""
    return list(torch.ops.mtlkernels.gather_triton(
        list(xs), list(idx1), list(idx2), [int(d) for d in dim1], [int(d) for d in dim2]))
