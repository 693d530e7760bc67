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
runs as ONE kernel launch, driven by a small int64 table copied to the device once per call. The
tables are the ones the C++/CUDA ops use (``csrc/include/mtlkernels/common.h``), built by the same
C++ code (``torch.ops.mtlkernels._filter_stats_table`` / ``_gather_table``): one format per op.

* ``filter_stats``: per layer the first output row, K and the weight address, per (layer, task) the
  gradient address, then an int32 ``row -> layer`` map. One program per filter row (of the whole
  network): it looks its layer up (one int32 load), loads the weight/gradient base addresses from
  the table and casts them with ``.to(tl.pointer_type(...))``, then streams the row in ``BLOCK_K``
  chunks (``tl.range(..., num_stages=...)``: software-pipelined loads; ``tl.multiple_of`` on the
  row pointers when every row starts on 16 bytes, so 16-bit inputs get vector loads), accumulating
  ``dot``, the T x T ``gram`` and ``wg2``, ``wsq`` and ``wabs`` in float32, element-wise over the
  chunk and reduced over K once at the end. For T a power of two the gradients are a
  ``[TP, BLOCK_K]`` tile and the T x T sums broadcast products ``g[:, None, :] * g[None, :, :]``;
  otherwise the padded TP x TP products would be mostly waste (T=3: 16 for 6 pairs), so the tile
  has one row per task pair ``i <= j`` (T(T+1)/2 padded: 8 at T=3), reading the rows of tasks i
  and j (a row read for several pairs comes from L1). ``tl.dot`` was not used: its tiles are at
  least 16 wide. BLOCK_K stays >= 32 (T=16 takes 8 warps instead of BLOCK_K = 16). Integer sizes
  are not specialised (``do_not_specialize``), so pruning C does not compile new variants.

  Why a pointer table rather than a flat gradient bank (``torch.cat`` of every gradient): the bank
  would copy all of the user's gradients (the size of the model times T) just to give the kernel one
  base pointer; the table is a few hundred bytes and the kernel reads the gradients where autograd
  left them.

* ``gather``: each tensor is canonicalised (in C++) to five dims ``[A, D1, B, D2, C]`` (the two
  gathered dims and the products of the dims around them; a missing index is a size-1 dummy dim or
  a null index address), with the multiply-high dividers of its output index math. A program finds
  its tensor by a binary search over the table's block map (no per-block host table) and maps its
  elements to input offsets with those dividers (no division per element for outputs under 2^31
  elements). The gather is a copy, so it is dtype-agnostic: the kernel's pointers are the integer
  type of the element width (``uint8``/``int16``/``int32``/``int64``, so ``bool``, ``float16``,
  ``float64``, ... all work); a pointer has one element type, so there is one launch per distinct
  element size among the tensors (usually one or two), each skipping the other sizes' blocks.

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
def _pairs(T, NP: tl.constexpr, TP: tl.constexpr):
    """The upper-triangle task pairs (i, j), i <= j, row-major, as [NP] index vectors (pad masked)."""
    p = tl.arange(0, NP)
    rem = p
    pi = p * 0
    go = p >= 0
    for i in tl.static_range(TP):   # row i of the triangle holds T - i pairs (common.h pair_index)
        go = go & (rem >= T - i) & (i < T)   # stays false once p's row is found
        rem = tl.where(go, rem - (T - i), rem)
        pi = tl.where(go, pi + 1, pi)
    return pi, pi + rem, p < T * (T + 1) // 2


@triton.jit
def _store_pairs(gram_ptr, wg2_ptr, r, T, pi, pj, p_mask, gram, wg2):
    """Pair (i, j) sums into [i, j] and [j, i] of row r's T x T blocks."""
    base = r * T * T
    tl.store(gram_ptr + base + pi * T + pj, gram, mask=p_mask)
    tl.store(gram_ptr + base + pj * T + pi, gram, mask=p_mask)
    tl.store(wg2_ptr + base + pi * T + pj, wg2, mask=p_mask)
    tl.store(wg2_ptr + base + pj * T + pi, wg2, mask=p_mask)


@triton.jit
def _row_pairs(w_row, g_tab, row_off, K, T, r, dot_ptr, gram_ptr, wg2_ptr, elem_ptr_ty,
               BLOCK_K: tl.constexpr, NP: tl.constexpr, TP: tl.constexpr, ALIGNED: tl.constexpr,
               NUM_STAGES: tl.constexpr):
    """T not a power of two: one [NP, BLOCK_K] tile row per task pair i <= j (T = 3: 8 rows where
    the full TP x TP products take 16), each reading the rows of tasks i and j; a task row read
    for several pairs comes from L1, not DRAM. Returns the W-only sums."""
    pi, pj, p_mask = _pairs(T, NP, TP)
    gi_rows = tl.load(g_tab + pi, mask=p_mask, other=0).to(elem_ptr_ty) + row_off
    gj_rows = tl.load(g_tab + pj, mask=p_mask, other=0).to(elem_ptr_ty) + row_off
    if ALIGNED:
        gi_rows = tl.multiple_of(gi_rows, 16)
        gj_rows = tl.multiple_of(gj_rows, 16)
    dot_acc = tl.zeros([NP, BLOCK_K], dtype=tl.float32)
    gram_acc = tl.zeros([NP, BLOCK_K], dtype=tl.float32)
    wg2_acc = tl.zeros([NP, BLOCK_K], dtype=tl.float32)
    wsq_acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    wabs_acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):   # software-pipelined loads
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K
        m2 = p_mask[:, None] & k_mask[None, :]
        w = tl.load(w_row + k, mask=k_mask, other=0.0).to(tl.float32)                   # [BK]
        gi = tl.load(gi_rows[:, None] + k[None, :], mask=m2, other=0.0).to(tl.float32)  # [NP, BK]
        gj = tl.load(gj_rows[:, None] + k[None, :], mask=m2, other=0.0).to(tl.float32)
        gg = gi * gj
        w2 = w * w
        dot_acc += gi * w[None, :]
        gram_acc += gg
        wg2_acc += gg * w2[None, :]
        wsq_acc += w2
        wabs_acc += tl.abs(w)
    # the dot of task i from its diagonal pair (i, i)
    tl.store(dot_ptr + r * T + pi, tl.sum(dot_acc, axis=1), mask=p_mask & (pi == pj))
    _store_pairs(gram_ptr, wg2_ptr, r, T, pi, pj, p_mask, tl.sum(gram_acc, axis=1),
                 tl.sum(wg2_acc, axis=1))
    return tl.sum(wsq_acc, axis=0), tl.sum(wabs_acc, axis=0)


@triton.jit
def _row_full(w_row, g_tab, row_off, K, T, r, dot_ptr, gram_ptr, wg2_ptr, elem_ptr_ty,
              BLOCK_K: tl.constexpr, TP: tl.constexpr, ALIGNED: tl.constexpr,
              NUM_STAGES: tl.constexpr):
    """T a power of two (no pair is padding): the [TP, BLOCK_K] task tile and its TP x TP
    broadcast products. Returns the W-only sums."""
    t = tl.arange(0, TP)
    t_mask = t < T
    g_rows = tl.load(g_tab + t, mask=t_mask, other=0).to(elem_ptr_ty) + row_off
    if ALIGNED:
        g_rows = tl.multiple_of(g_rows, 16)
    dot_acc = tl.zeros([TP, BLOCK_K], dtype=tl.float32)
    gram_acc = tl.zeros([TP, TP, BLOCK_K], dtype=tl.float32)
    wg2_acc = tl.zeros([TP, TP, BLOCK_K], dtype=tl.float32)
    wsq_acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    wabs_acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):   # software-pipelined loads
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K
        w = tl.load(w_row + k, mask=k_mask, other=0.0).to(tl.float32)                   # [BK]
        g = tl.load(g_rows[:, None] + k[None, :], mask=t_mask[:, None] & k_mask[None, :],
                    other=0.0).to(tl.float32)                                            # [TP, BK]
        gg = g[:, None, :] * g[None, :, :]
        w2 = w * w
        dot_acc += g * w[None, :]
        gram_acc += gg
        wg2_acc += gg * w2[None, None, :]
        wsq_acc += w2
        wabs_acc += tl.abs(w)
    tl.store(dot_ptr + r * T + t, tl.sum(dot_acc, axis=1), mask=t_mask)
    tt = t[:, None] * T + t[None, :]
    tt_mask = t_mask[:, None] & t_mask[None, :]
    tl.store(gram_ptr + r * T * T + tt, tl.sum(gram_acc, axis=2), mask=tt_mask)
    tl.store(wg2_ptr + r * T * T + tt, tl.sum(wg2_acc, axis=2), mask=tt_mask)
    return tl.sum(wsq_acc, axis=0), tl.sum(wabs_acc, axis=0)


@triton.jit(do_not_specialize=["T", "L"])
def _filter_stats_kernel(
    tab_ptr,        # int64 FilterStatsTable of common.h: offsets, K, weight and gradient addresses
    map_ptr,        # int32 [F] row -> layer (the table's optional suffix)
    witness_ptr,    # any weight: gives the element type of the table's addresses
    dot_ptr, gram_ptr, wsq_ptr, wabs_ptr, wg2_ptr,
    T, L,           # not specialised: a new value must not compile a new variant mid-training
    BLOCK_K: tl.constexpr,
    NP: tl.constexpr,         # tile rows of the pair path: T(T+1)/2 padded to a power of two
    TP: tl.constexpr,         # T padded to a power of two
    PAIRS: tl.constexpr,      # one product per task pair (i <= j) instead of the full TP x TP
    VEC: tl.constexpr,        # elements per 16 bytes
    ALIGNED: tl.constexpr,    # every row starts 16-byte aligned and K % VEC == 0: vector loads
    NUM_STAGES: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    elem_ptr_ty = witness_ptr.dtype
    layer = tl.load(map_ptr + r).to(tl.int64)
    K = tl.load(tab_ptr + L + 1 + layer)
    if ALIGNED:
        K = tl.multiple_of(K, VEC)
    row_off = (r - tl.load(tab_ptr + layer)) * K
    w_row = tl.load(tab_ptr + 2 * L + 1 + layer).to(elem_ptr_ty) + row_off
    if ALIGNED:
        w_row = tl.multiple_of(w_row, 16)
    g_tab = tab_ptr + 3 * L + 1 + layer * T
    if PAIRS:
        wsq, wabs = _row_pairs(w_row, g_tab, row_off, K, T, r, dot_ptr, gram_ptr, wg2_ptr,
                               elem_ptr_ty, BLOCK_K, NP, TP, ALIGNED, NUM_STAGES)
    else:
        wsq, wabs = _row_full(w_row, g_tab, row_off, K, T, r, dot_ptr, gram_ptr, wg2_ptr,
                              elem_ptr_ty, BLOCK_K, TP, ALIGNED, NUM_STAGES)
    tl.store(wsq_ptr + r, wsq)
    tl.store(wabs_ptr + r, wabs)


# Sizes and strides change as pruning shrinks C: no variant per divisibility by 16, but a unit
# stride (NCHW's spatial, channels_last's channel) stays specialised: it makes the loads contiguous.
@triton.jit(do_not_specialize_on_alignment=["C", "S", "P", "CHUNK", "a_sn", "a_sc", "a_ss", "d_sn",
                                            "d_sc", "d_ss"])
def _channel_contrib_kernel(
    a_ptr, d_ptr, part_ptr,         # part: float64 [splits, C]
    C, S, P, CHUNK,
    a_sn, a_sc, a_ss, d_sn, d_sc, d_ss,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BY_ROWS: tl.constexpr,
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
    if BY_ROWS:   # rows of S >= cc_rows_min_s: walk (n, s) row by row, a division per row only
        p_end = tl.minimum(p_start + CHUNK, P)
        for n in range(p_start // S, (p_end - 1) // S + 1):
            s_hi = tl.minimum(p_end - n * S, S)
            for s0 in range(tl.maximum(p_start - n * S, 0), s_hi, BLOCK_P):
                s = s0 + tl.arange(0, BLOCK_P).to(tl.int64)
                mask = c_mask[:, None] & (s < s_hi)[None, :]
                a = tl.load(a_ptr + a_c[:, None] + (n * a_sn + s * a_ss)[None, :], mask=mask, other=0.0)
                d = tl.load(d_ptr + d_c[:, None] + (n * d_sn + s * d_ss)[None, :], mask=mask, other=0.0)
                acc += a.to(tl.float32).to(tl.float64) * d.to(tl.float32).to(tl.float64)
    else:         # short rows: positions p flat, (n, s) = divmod(p, S) per element
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


@triton.jit
def _fast_div(n, word):
    """``n // d`` for ``0 <= n < 2**31`` through a divider word ``m | s << 32`` of the gather table
    (common.h FastDivU31: a multiply-high, an add and a shift instead of a division)."""
    m = (word & 0xFFFFFFFF).to(tl.uint32)
    s = (word >> 32).to(tl.uint32)
    return (tl.umulhi(n, m) + n) >> s


@triton.jit(do_not_specialize=["N", "STARTS", "ERR"])
def _gather_kernel(
    tab_ptr,        # int64 gather table of common.h: records, block map, error word
    witness_ptr,    # any tensor of this launch's element size: gives the element type
    N, STARTS, ERR,
    WORDS: tl.constexpr,      # kGatherDescWords
    DIV: tl.constexpr,        # kGatherDividerWord
    ESIZE: tl.constexpr,      # element size of this launch (records of other sizes are skipped)
    SEARCH: tl.constexpr,     # binary-search steps over the N + 1 block starts
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    # this program's tensor: the last i with block_starts[i] <= pid (no per-block host table)
    lo = pid * 0
    hi = lo + N - 1
    for _ in tl.static_range(SEARCH):
        mid = (lo + hi + 1) // 2
        go = tl.load(tab_ptr + STARTS + mid) <= pid
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid - 1)
    rec = tab_ptr + lo * WORDS
    elem_ptr_ty = witness_ptr.dtype
    A = tl.load(rec + 0)
    D1 = tl.load(rec + 1)
    B = tl.load(rec + 2)
    D2 = tl.load(rec + 3)
    C = tl.load(rec + 4)
    n1 = tl.load(rec + 5)
    n2 = tl.load(rec + 6)
    idx1_addr = tl.load(rec + 7)
    idx2_addr = tl.load(rec + 8)
    src = tl.load(rec + 9).to(elem_ptr_ty)
    dst = tl.load(rec + 10).to(elem_ptr_ty)
    total = A * n1 * B * n2 * C
    start = (pid - tl.load(tab_ptr + STARTS + lo)) * BLOCK
    e = start + tl.arange(0, BLOCK).to(tl.int64)
    mask = (e < total) & ((e * 0 + tl.load(rec + 11)) == ESIZE)   # broadcast, like the flags below
    # output [A, n1, B, n2, C] coordinates of e
    if total < 2147483648:   # every index < 2^31: multiply-high divisions, dividers from the table
        e32 = e.to(tl.uint32)
        q0 = _fast_div(e32, tl.load(rec + DIV))
        q1 = _fast_div(q0, tl.load(rec + DIV + 1))
        q2 = _fast_div(q1, tl.load(rec + DIV + 2))
        q3 = _fast_div(q2, tl.load(rec + DIV + 3))
        c = (e32 - q0 * C.to(tl.uint32)).to(tl.int64)
        j2 = (q0 - q1 * n2.to(tl.uint32)).to(tl.int64)
        b = (q1 - q2 * B.to(tl.uint32)).to(tl.int64)
        j1 = (q2 - q3 * n1.to(tl.uint32)).to(tl.int64)
        a = q3.to(tl.int64)
    else:
        r0 = e // C
        r1 = r0 // n2
        r2 = r1 // B
        c = e - r0 * C
        j2 = r0 - r1 * n2
        b = r1 - r2 * B
        a = r2 // n1
        j1 = r2 - a * n1
    # a null index address means "keep the dim whole" (identity)
    has1 = (e * 0 + idx1_addr) != 0     # broadcast the flag to the block
    has2 = (e * 0 + idx2_addr) != 0
    i1 = tl.load(idx1_addr.to(tl.pointer_type(tl.int64)) + j1, mask=mask & has1, other=0)
    i2 = tl.load(idx2_addr.to(tl.pointer_type(tl.int64)) + j2, mask=mask & has2, other=0)
    i1 = tl.where(has1, i1, j1)
    i2 = tl.where(has2, i2, j2)
    # index values are not trusted: a bad one is never loaded from, and flags the call instead
    ok = (i1 >= 0) & (i1 < D1) & (i2 >= 0) & (i2 < D2)
    tl.store(tab_ptr + ERR + e * 0, e * 0 + lo + 1, mask=mask & ~ok)
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
    "cc_rows_min_s": 32,     # channel_contrib: rows of S >= this walk (n, s) with no division per element
    "gather_block": 1024,    # gather: output elements per program
    "fs_num_warps": 4,
    "fs_num_stages": 3,      # filter_stats: K loop software pipelining (tl.range)
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


def _rows_aligned(host: Tensor, num_layers: int, num_tasks: int, esize: int) -> bool:
    """Every weight and gradient row of the table starts on 16 bytes (base addresses and K x element
    size multiples of 16): the kernel may then promise 16-byte loads (tl.multiple_of)."""
    k = host[num_layers + 1:2 * num_layers + 1]
    addrs = host[2 * num_layers + 1:num_layers * (3 + num_tasks) + 1]
    return bool(((k * esize) % 16 == 0).all()) and bool((addrs % 16 == 0).all())


def _filter_stats_impl(weights: List[Tensor], grads: List[Tensor]) -> List[Tensor]:
    device = weights[0].device
    if _use_reference(device):
        return list(reference.filter_stats(weights, grads))
    num_layers = len(weights)
    num_tasks, _ = reference.grads_form(weights, grads)
    num_rows = sum(int(w.shape[0]) for w in weights)
    max_k = max(w.numel() // int(w.shape[0]) for w in weights)
    outs = _empty_stats(num_rows, num_tasks, device)
    # the table of common.h (built in C++, like the CUDA binding's) with its int32 row -> layer map
    host = torch.ops.mtlkernels._filter_stats_table(weights, grads, True)
    tab = _to_device(host, device)
    row_map = tab[num_layers * (3 + num_tasks) + 1:].view(torch.int32)
    tp = _next_pow2(num_tasks)
    np_ = _next_pow2(num_tasks * (num_tasks + 1) // 2)
    pairs = np_ < tp * tp                        # T not a power of two
    rows = np_ if pairs else tp * tp             # tile rows of the two T x T partial sums
    # The partial sums live in registers across the loop: gram and wg2 ([rows, BLOCK_K] each; the
    # pair path also a per-pair dot) at about 2 x fs_tile elements per fs_num_warps warps (64
    # registers per thread at 4), with more warps rather than a BLOCK_K under 32 (T=16: 8 warps).
    block_k = max(8, min(TUNE["fs_max_block_k"], max(32, TUNE["fs_tile"] // rows), _next_pow2(max_k)))
    acc_elems = (3 if pairs else 2) * rows * block_k
    warps = min(16, TUNE["fs_num_warps"] * _next_pow2(triton.cdiv(acc_elems, 2 * TUNE["fs_tile"])))
    esize = weights[0].element_size()
    torch.library.wrap_triton(_filter_stats_kernel)[(num_rows,)](
        tab, row_map, weights[0], *outs, num_tasks, num_layers,
        BLOCK_K=block_k, NP=np_, TP=tp, PAIRS=pairs, VEC=16 // esize,
        ALIGNED=_rows_aligned(host, num_layers, num_tasks, esize),
        NUM_STAGES=TUNE["fs_num_stages"], num_warps=warps,
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
        BLOCK_C=block_c, BLOCK_P=block_p, BY_ROWS=s >= TUNE["cc_rows_min_s"],
        num_warps=TUNE["cc_num_warps"],
    )
    return part.sum(0).to(torch.float32)  # the one rounding to float32


def _gather_impl(xs: List[Tensor], idx1: List[Optional[Tensor]], idx2: List[Optional[Tensor]],
                 dim1: List[int], dim2: List[int]) -> List[Tensor]:
    device = xs[0].device
    if _use_reference(device):
        return list(reference.gather(xs, idx1, idx2, dim1, dim2))
    block = TUNE["gather_block"]
    # the table of common.h (built in C++, like the CUDA binding's) and the outputs it points at
    host, outs = torch.ops.mtlkernels._gather_table(xs, idx1, idx2, dim1, dim2, block)
    words, divider_word = (int(v) for v in torch.ops.mtlkernels._table_layout())
    n = len(xs)
    starts, err = n * words, n * words + n + 1
    num_blocks = int(host[err - 1])                 # block_starts[n]
    tab = _to_device(host, device)
    # one launch per element size (a Triton pointer has one element type); each skips the others
    for esize in sorted({x.element_size() for x in xs}) if num_blocks else ():
        witness = torch.empty(0, dtype=_INT_OF_SIZE[esize], device=device)
        torch.library.wrap_triton(_gather_kernel)[(num_blocks,)](
            tab, witness, n, starts, err, WORDS=words, DIV=divider_word, ESIZE=esize,
            SEARCH=max(1, (n - 1).bit_length()), BLOCK=block, num_warps=TUNE["gather_num_warps"],
        )
    # Waits for the kernels on CUDA (a sync per call): only the device knows the index values.
    bad = int(tab[err].item())
    if bad:
        raise RuntimeError(f"gather_triton: an index of xs[{bad - 1}] (idx1[{bad - 1}] or idx2[{bad - 1}]) "
                           "is out of range for its dim")
    return list(outs)


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
    return [x.new_empty(_rawcheck.gather_out_shape(x, i1, i2, d1, d2)) for x, i1, i2, d1, d2
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
