"""Public, validated entry points of the mtlkernels ops.

Every function here checks its inputs in Python (raising ``TypeError``/``ValueError`` that name the
argument) *before* any kernel runs, resolves the backend (see :mod:`mtlkernels._backend`), and calls
the same contract on the chosen backend: the pure-PyTorch :mod:`mtlkernels.reference`, the C++/CUDA
ops ``torch.ops.mtlkernels.*`` of ``mtlkernels._C``, or the Triton ops of
:mod:`mtlkernels.triton_ops`.

The ops are not differentiable: they run under ``torch.no_grad()`` and their outputs never require
grad, whatever the inputs do (statistics and compaction are outside the training graph).

NaN and Inf in inputs are propagated to the outputs (the statistics of a filter with a NaN gradient
are NaN), never silently turned into a score; the criteria and the driver decide what to do.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _backend, _rawcheck, reference

__all__ = [
    "FilterStats",
    "MAX_TASKS",
    "filter_stats",
    "filter_stats_many",
    "channel_contrib",
    "gather_channels",
    "gather_many",
]

#: Largest number of tasks the compiled kernels accept (the T x T Gram lives in registers).
MAX_TASKS = 16
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: float64 is accepted by the reference backend only (the tests' oracle).
REFERENCE_DTYPES = KERNEL_DTYPES + (torch.float64,)

GradsArg = Union[Tensor, Sequence[Tensor]]


@dataclass(frozen=True, init=False)
class FilterStats:
    """Per-filter multi-task statistics; one row per filter of every layer given.

    ``dot[f, t] = sum_k W[f,k] G[t,f,k]``; ``gram[f, i, j] = sum_k G[i,f,k] G[j,f,k]``;
    ``wsq[f] = sum_k W[f,k]^2``; ``wabs[f] = sum_k |W[f,k]|``;
    ``wg2[f, i, j] = sum_k W[f,k]^2 G[i,f,k] G[j,f,k]``. All float32 (float64 for float64 input).

    ``offsets`` (a tuple of L + 1 ints) delimits the layers: layer ``l`` owns rows
    ``offsets[l]:offsets[l + 1]``. ``per_layer()`` gives one :class:`FilterStats` per layer (views).

    Accumulating over minibatches: the paper's code (and NVIDIA's Taylor_pruning) averages per-batch
    *criterion values* (e.g. the mean over batches of ``dot^2`` or of the per-batch cosine), which
    is not the criterion of summed statistics. Sum scores, not statistics, across batches (the
    pruning driver does).
    """

    dot: Tensor
    gram: Tensor
    wsq: Tensor
    wabs: Tensor
    wg2: Tensor
    _offsets: Optional[Tuple[int, ...]]
    names: Optional[Tuple[str, ...]]
    _layers: Optional[Sequence[Tensor]] = field(default=None, repr=False, compare=False)

    def __init__(self, dot: Tensor, gram: Tensor, wsq: Tensor, wabs: Tensor, wg2: Tensor,
                 offsets: Optional[Sequence[int]] = None, names: Optional[Sequence[str]] = None, *,
                 layers: Optional[Sequence[Tensor]] = None) -> None:
        """``offsets`` default: one layer, or the rows of ``layers`` (the weights), counted when
        first asked for (for 155 layers, reading their sizes costs a third of the public call)."""
        if offsets is None and layers is None:
            offsets = (0, dot.shape[0])
        values = (dot, gram, wsq, wabs, wg2, None if offsets is None else tuple(offsets),
                  None if names is None else tuple(names), layers)
        for f, v in zip(("dot", "gram", "wsq", "wabs", "wg2", "_offsets", "names", "_layers"), values):
            object.__setattr__(self, f, v)

    @property
    def offsets(self) -> Tuple[int, ...]:
        """L + 1 row offsets: layer ``l`` owns rows ``offsets[l]:offsets[l + 1]``."""
        if self._offsets is None:
            sizes = (w.shape[0] for w in self._layers)
            object.__setattr__(self, "_offsets", tuple(itertools.accumulate(sizes, initial=0)))
            object.__setattr__(self, "_layers", None)
        return self._offsets

    @property
    def num_tasks(self) -> int:
        return self.dot.shape[1]

    @property
    def num_filters(self) -> int:
        return self.dot.shape[0]

    @property
    def num_layers(self) -> int:
        return len(self.offsets) - 1

    def layer_of_filter(self) -> Tensor:
        """``[F]`` int64: the layer index of every row."""
        sizes = torch.tensor(self.offsets[1:], dtype=torch.int64) - torch.tensor(self.offsets[:-1])
        return torch.repeat_interleave(torch.arange(self.num_layers), sizes).to(self.dot.device)

    def rows(self, start: int, stop: int, name: Optional[str] = None) -> "FilterStats":
        return FilterStats(
            self.dot[start:stop], self.gram[start:stop], self.wsq[start:stop],
            self.wabs[start:stop], self.wg2[start:stop], (0, stop - start),
            None if name is None else (name,),
        )

    def per_layer(self) -> List["FilterStats"]:
        names = self.names or (None,) * self.num_layers
        return [self.rows(a, b, n) for a, b, n in zip(self.offsets[:-1], self.offsets[1:], names)]

    def tensors(self) -> Tuple[Tensor, ...]:
        return (self.dot, self.gram, self.wsq, self.wabs, self.wg2)

    def sum_by(
        self,
        index,
        num_groups: int,
        *,
        offsets: Optional[Sequence[int]] = None,
        dtype: Optional[torch.dtype] = None,
        check_index: bool = True,
    ) -> "FilterStats":
        """Statistics of channel *groups*: row ``f`` is added into row ``index[f]`` of the result
        (``-1``: the row belongs to no group and is dropped); groups no row maps to are zero.

        Every statistic is a sum over the elements of a row, so the statistics of a group of rows
        (a conv's filter with its bias and its norm's gamma/beta; the coupled channels of a
        residual stage) are the sums of its rows' statistics; a criterion is then applied once per
        group (:func:`mtlkernels.criteria.score`). Sums are formed in float64 and returned in
        ``dtype`` (default: this object's dtype); on any device, as ``index_add_`` over the F rows.

        Args:
            index: ``[F]`` integer group id of every row, in ``[-1, num_groups)``.
            num_groups: number of groups G (rows of the result).
            offsets: optional segment boundaries of the G result rows (``0 = o_0 <= ... = G``) for
                per-segment criteria such as ``taylor_task_mean_norm(normalize="layer")``;
                default one segment.
            dtype: result dtype (``torch.float64`` keeps sums that overflow float32 finite).
            check_index: validate the index values (a device sync when the index is on a GPU).
        """
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 0:
            raise ValueError(f"num_groups must be an int >= 0, got {num_groups!r}")
        if not isinstance(index, Tensor):
            index = torch.as_tensor(index, dtype=torch.int64)
        if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
            raise TypeError(f"index must be an integer tensor, got {index.dtype}")
        if index.dim() != 1 or index.shape[0] != self.num_filters:
            raise ValueError(f"index must be 1-D with one entry per row ({self.num_filters}), got shape {list(index.shape)}")
        if check_index and index.numel():
            lo, hi = int(index.min()), int(index.max())
            if lo < -1 or hi >= num_groups:
                raise ValueError(f"index holds values in [{lo}, {hi}]; valid are -1 (no group) and 0..{num_groups - 1}")
        offs = (0, num_groups) if offsets is None else tuple(int(o) for o in offsets)
        if offs[0] != 0 or offs[-1] != num_groups or any(b < a for a, b in zip(offs, offs[1:])):
            raise ValueError(f"offsets must rise from 0 to num_groups={num_groups}, got {list(offs)}")
        out_dtype = dtype or self.dot.dtype
        device = self.dot.device
        # dropped rows go to an extra trash row: no boolean masking, so no device sync
        idx = index.to(device=device, dtype=torch.int64)
        idx = torch.where(idx < 0, torch.full_like(idx, num_groups), idx)

        def reduce(x: Tensor) -> Tensor:
            out = torch.zeros((num_groups + 1,) + tuple(x.shape[1:]), dtype=torch.float64, device=device)
            return out.index_add_(0, idx, x.to(torch.float64))[:num_groups].to(out_dtype)

        return FilterStats(*(reduce(t) for t in self.tensors()), offsets=offs)


STAT_FIELDS = tuple(f.name for f in fields(FilterStats))[:5]


# ----------------------------------------------------------------------------------- validation
def _check_tensor(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _check_float(x: Tensor, name: str, dtypes=REFERENCE_DTYPES) -> None:
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have a floating dtype ({names}), got {x.dtype}")


def _common(tensors: Sequence[Tuple[str, Tensor]]) -> Tuple[torch.device, torch.dtype]:
    (name0, t0) = tensors[0]
    for name, t in tensors[1:]:
        if t.device != t0.device:
            raise ValueError(
                f"all inputs must be on one device: {name0} is on {t0.device}, {name} on {t.device}"
            )
        if t.dtype != t0.dtype:
            raise TypeError(
                f"all inputs must share one dtype: {name0} is {t0.dtype}, {name} is {t.dtype}"
            )
    return t0.device, t0.dtype


def _resolve(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    allow = _backend.BACKENDS if dtype in KERNEL_DTYPES else ("reference",)
    if backend == "auto" and dtype not in KERNEL_DTYPES:
        return "reference"
    if dtype not in KERNEL_DTYPES and isinstance(backend, str) and backend in _backend.BACKENDS[1:]:
        raise RuntimeError(
            f"backend {backend!r} cannot run {dtype} inputs: the kernels take float32, float16 or "
            f"bfloat16; {dtype} runs on the 'reference' backend only"
        )
    return _backend.resolve(backend, device, allow=allow)


def _split_grads(g: GradsArg, w: Tensor, name: str) -> List[Tensor]:
    """Layer gradients as a list of T tensors shaped like ``w`` (views of a stacked tensor)."""
    if isinstance(g, Tensor):
        if g.dim() != w.dim() + 1 or tuple(g.shape[1:]) != tuple(w.shape):
            raise ValueError(
                f"{name} must be [T, {', '.join(map(str, w.shape))}] (T task gradients of the "
                f"weight), got {list(g.shape)}"
            )
        return list(g.unbind(0))
    if not isinstance(g, (list, tuple)):
        raise TypeError(f"{name} must be a tensor [T, ...] or a list of T tensors, got {type(g).__name__}")
    out = []
    for t, gt in enumerate(g):
        _check_tensor(gt, f"{name}[{t}]")
        if tuple(gt.shape) != tuple(w.shape):
            raise ValueError(
                f"{name}[{t}] must have the weight's shape {list(w.shape)}, got {list(gt.shape)}"
            )
        out.append(gt)
    return out


# ----------------------------------------------------------------------------------- dispatch
def _triton_ops():
    from . import triton_ops  # imported on first use: Triton is optional

    return triton_ops


def _late(module, name: str):
    """``module().name``, looked up per call rather than at import (Triton loads on first use, and
    tests patch the backends' functions)."""
    return lambda *args: getattr(module(), name)(*args)


#: The one dispatch table: op -> backend -> the backend's function of the raw contract
#: (:mod:`mtlkernels.reference`). "cpu" and "cuda" are the same C++ op; the dispatcher picks the
#: kernel by the tensors' device.
_OPS = {
    op: {"reference": _late(lambda: reference, op), "cpu": _late(lambda: torch.ops.mtlkernels, op),
         "cuda": _late(lambda: torch.ops.mtlkernels, op), "triton": _late(_triton_ops, op)}
    for op in ("filter_stats", "channel_contrib", "gather")
}


# ----------------------------------------------------------------------------------- filter stats
# The ops are not differentiable (statistics and compaction sit outside the training graph): every
# backend runs under no_grad, so outputs never require grad, whatever the inputs do.
@torch.no_grad()
def _run_filter_stats(backend: str, weights: List[Tensor], grads: List[Tensor]):
    return tuple(_OPS["filter_stats"][backend](weights, grads))


def filter_stats_many(
    weights: Sequence[Tensor],
    grads: Sequence[GradsArg],
    *,
    backend: str = "auto",
    names: Optional[Sequence[str]] = None,
) -> FilterStats:
    """Per-filter multi-task statistics of many layers in one call (one parallel region / launch).

    Args:
        weights: L weights, layer ``l`` shaped ``[F_l, ...]`` (conv ``[F, C, kh, kw]``, linear
            ``[F, in]``, per-channel ``[F]``).
        grads: for each layer, its T per-task gradients: a ``[T, F_l, ...]`` tensor or a list of
            T tensors shaped like the weight. T is the same for every layer, ``1 <= T <= 16``.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.
        names: optional layer names kept on the result.

    Returns:
        :class:`FilterStats` with one row per filter of the whole network and per-layer offsets.
    """
    if isinstance(weights, Tensor) or not isinstance(weights, (list, tuple)):
        raise TypeError("weights must be a list of tensors (use filter_stats for one layer)")
    if not isinstance(grads, (list, tuple)):
        raise TypeError(f"grads must be a list with one entry per layer, got {type(grads).__name__}")
    if len(weights) == 0:
        raise ValueError("weights is empty: give at least one layer")
    if len(grads) != len(weights):
        raise ValueError(f"grads must have one entry per weight: {len(weights)} weights, {len(grads)} grads")
    if names is not None and len(names) != len(weights):
        raise ValueError(f"names must have one entry per weight: {len(weights)} weights, {len(names)} names")
    out = _filter_stats_fast(weights, grads, backend)
    if out is None:
        out, offsets = _filter_stats_checked(weights, grads, backend)
        return FilterStats(*out, offsets=offsets, names=names)
    return FilterStats(*out, names=names, layers=list(weights))


def _filter_stats_fast(weights, grads, backend: str):
    """The op called once with the caller's tensors as they are, or None.

    The op checks every tensor before its kernel runs (C++ ``check_filter_stats_args``, or
    ``_rawcheck`` for Triton) and takes stacked ``[T, F, ...]`` gradients and any dense-row layout
    (channels_last) natively, so Python does O(1) work for stacked gradients (one flattening for
    lists of T tensors) instead of per-layer checks, unbinds and copies: for a 155-layer network
    those cost more than the kernel (bench/host_overhead_bench.py). None when the call is not for a
    kernel or the op refuses it: :func:`_filter_stats_checked` then runs the checks one by one and
    raises the error naming the argument, or copies what the kernels cannot read in place."""
    w0, g0 = weights[0], grads[0]
    if not isinstance(w0, Tensor) or w0.dtype not in KERNEL_DTYPES:
        return None
    try:
        chosen = _resolve(backend, w0.device, w0.dtype)
    except (TypeError, ValueError, RuntimeError):  # reported after the input checks, as before
        return None
    if chosen == "reference":
        return None
    if isinstance(g0, Tensor):
        if g0.dim() != w0.dim() + 1:  # a bare [F, ...] tensor is neither form of this API
            return None
        flat = list(grads)
    else:
        try:
            num_tasks = len(g0)
            if any(len(gl) != num_tasks for gl in grads):
                return None
            flat = [g for gl in grads for g in gl]
        except TypeError:
            return None
        # T=1 lists must hold weight-shaped tensors: a [1, F, ...] one would read as a stack
        if not flat or not isinstance(flat[0], Tensor) or flat[0].dim() != w0.dim():
            return None
    try:
        with torch.no_grad():  # outputs never require grad, whatever the inputs do
            return _run_filter_stats(chosen, list(weights), flat)
    except (RuntimeError, TypeError, ValueError):
        return None


def _filter_stats_checked(weights, grads, backend: str):
    """Every check one by one (errors name the argument), then the op on tensors it can read: a
    layer whose weight rows are not dense is copied to contiguous, a gradient whose strides differ
    from its weight's is copied into the weight's layout."""
    flat_w, flat_g, offsets, num_tasks, device, dtype = _layers_checked(weights, grads)
    chosen = _resolve(backend, device, dtype)
    if chosen != "reference":
        flat_w, flat_g = _readable_layouts(flat_w, flat_g, num_tasks)
    return _run_filter_stats(chosen, flat_w, flat_g), offsets


def _readable_layouts(flat_w: List[Tensor], flat_g: List[Tensor], num_tasks: int):
    out_w, out_g = [], []
    for l, w in enumerate(flat_w):
        if not _rawcheck.rows_dense(w):
            w = w.contiguous()
        for g in flat_g[l * num_tasks:(l + 1) * num_tasks]:
            if not _rawcheck.same_layout(w.shape, g.stride(), w.stride()):
                g = torch.empty_like(w).copy_(g)  # w is dense: empty_like keeps its strides
            out_g.append(g)
        out_w.append(w)
    return out_w, out_g


def _layers_checked(weights, grads):
    """Checks the layers one by one, raising an error that names the offending argument."""
    flat_w: List[Tensor] = []
    flat_g: List[Tensor] = []
    offsets = [0]
    num_tasks = None
    for l, (w, g) in enumerate(zip(weights, grads)):
        _check_tensor(w, f"weights[{l}]")
        _check_float(w, f"weights[{l}]")
        if w.dim() == 0 or w.numel() == 0:
            raise ValueError(f"weights[{l}] must be a non-empty [F, ...] tensor, got shape {list(w.shape)}")
        gl = _split_grads(g, w, f"grads[{l}]")
        if num_tasks is None:
            num_tasks = len(gl)
            if not 1 <= num_tasks <= MAX_TASKS:
                raise ValueError(f"the number of tasks T must be in 1..{MAX_TASKS}, got T={num_tasks} in grads[{l}]")
        elif len(gl) != num_tasks:
            raise ValueError(f"grads[{l}] has T={len(gl)} task gradients, but grads[0] has T={num_tasks}")
        flat_w.append(w)
        flat_g.extend(gl)
        offsets.append(offsets[-1] + w.shape[0])
    named = [(f"weights[{l}]", w) for l, w in enumerate(flat_w)]
    named += [(f"grads[{i // num_tasks}][{i % num_tasks}]", g) for i, g in enumerate(flat_g)]
    device, dtype = _common(named)
    return flat_w, flat_g, offsets, num_tasks, device, dtype


def filter_stats(weight: Tensor, grads: GradsArg, *, backend: str = "auto") -> FilterStats:
    """Per-filter statistics of one layer: ``weight [F, ...]``, ``grads [T, F, ...]`` or T tensors."""
    _check_tensor(weight, "weight")
    try:
        return filter_stats_many([weight], [grads], backend=backend)
    except (TypeError, ValueError) as exc:  # name the single-layer arguments, not list slots
        msg = str(exc).replace("weights[0]", "weight").replace("grads[0]", "grads")
        raise type(exc)(msg) from None


# ----------------------------------------------------------------------------------- contribution
def channel_contrib(activation: Tensor, grad: Tensor, *, backend: str = "auto") -> Tensor:
    """Per-channel ``sum over batch and spatial of activation * grad`` (float32 ``[C]``).

    This is the gradient of a per-channel gate placed on ``activation`` times the gate value 1: the
    gate-style first-order Taylor term (Molchanov et al. 2019) without inserting gate layers.
    Works on contiguous (NCHW) and channels_last inputs without copying them.
    """
    _check_tensor(activation, "activation")
    _check_tensor(grad, "grad")
    _check_float(activation, "activation")
    _check_float(grad, "grad")
    if activation.dim() < 2:
        raise ValueError(f"activation must be [N, C, *], got shape {list(activation.shape)}")
    if grad.shape != activation.shape:
        raise ValueError(
            f"grad must have the activation's shape {list(activation.shape)}, got {list(grad.shape)}"
        )
    if activation.numel() == 0:
        raise ValueError(f"activation is empty (shape {list(activation.shape)})")
    device, dtype = _common([("activation", activation), ("grad", grad)])
    return _run_channel_contrib(_resolve(backend, device, dtype), activation, grad)


@torch.no_grad()
def _run_channel_contrib(chosen: str, activation: Tensor, grad: Tensor) -> Tensor:
    if chosen == "reference":  # the reference takes any [N, C, *]
        return _OPS["channel_contrib"][chosen](activation, grad)
    # [N, C, S] views: NCHW and channels_last both flatten their spatial dims without a copy.
    a3 = activation.flatten(2) if activation.dim() > 2 else activation.unsqueeze(-1)
    d3 = grad.flatten(2) if grad.dim() > 2 else grad.unsqueeze(-1)
    return _OPS["channel_contrib"][chosen](a3, d3)


# ----------------------------------------------------------------------------------- gather
def _check_index(idx, x: Tensor, dim: int, name: str, check_values: bool, checked: Optional[dict] = None) -> Optional[Tensor]:
    """Validates one index for ``x.shape[dim]``; ``checked`` memoises (index, size) pairs already
    verified in this call, so an index shared by many tensors costs one device sync, not many."""
    if idx is None:
        return None
    if not isinstance(idx, Tensor):
        idx = torch.as_tensor(idx, device=x.device)
        if idx.numel() == 0:  # [] becomes float32: report it as empty, not as non-integer
            idx = idx.to(torch.int64)
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer index tensor, got {idx.dtype}")
    if idx.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {list(idx.shape)}")
    if idx.device != x.device:
        raise ValueError(f"{name} is on {idx.device} but its tensor is on {x.device}")
    if idx.numel() == 0:
        raise ValueError(f"{name} is empty: at least one channel must be kept")
    key = (id(idx), idx._version, x.shape[dim])
    if check_values and (checked is None or key not in checked):
        lo, hi = int(idx.min()), int(idx.max())
        size = x.shape[dim]
        if lo < 0 or hi >= size:
            raise ValueError(f"{name} holds indices in [{lo}, {hi}], out of range for dim {dim} of size {size}")
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError(f"{name} has repeated indices: each kept channel must appear once")
        if checked is not None:
            checked[key] = idx
    return idx.to(torch.int64).contiguous()


def _per_tensor(arg, n: int, name: str) -> list:
    if isinstance(arg, (list, tuple)):
        if len(arg) != n:
            raise ValueError(f"{name} must have one entry per tensor: {n} tensors, {len(arg)} entries")
        return list(arg)
    return [arg] * n


def gather_many(
    tensors: Sequence[Tensor],
    out_idx=None,
    in_idx=None,
    *,
    out_dims: Union[int, Sequence[int]] = 0,
    in_dims: Union[int, Sequence[int]] = 1,
    backend: str = "auto",
    check_indices: bool = True,
) -> List[Tensor]:
    """Channel-gather compaction of many tensors in one call.

    ``out[i] = tensors[i].index_select(out_dims[i], out_idx[i]).index_select(in_dims[i], in_idx[i])``
    as new contiguous tensors; a ``None`` index keeps that dim whole. ``out_idx``/``in_idx`` are
    one index (used for every tensor), or a list with one entry (index or ``None``) per tensor;
    likewise ``out_dims``/``in_dims``. Depthwise convs: ``in_idx=None``. Transposed convs
    (``[C_in, C_out, kh, kw]``): ``out_dims=1, in_dims=0``. Indices must be unique and in range
    (checked unless ``check_indices=False``, which saves this check's device sync on CUDA; the ops
    still raise on an out-of-range index, from their kernels, but accept repeated ones).
    """
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError("tensors must be a list of tensors (use gather_channels for one tensor)")
    n = len(tensors)
    if n == 0:
        raise ValueError("tensors is empty")
    oi = _per_tensor(out_idx, n, "out_idx")
    ii = _per_tensor(in_idx, n, "in_idx")
    od = _per_tensor(out_dims, n, "out_dims")
    id_ = _per_tensor(in_dims, n, "in_dims")
    xs, i1s, i2s, d1s, d2s = [], [], [], [], []
    checked: dict = {}
    for k, x in enumerate(tensors):
        _check_tensor(x, f"tensors[{k}]")
        if x.numel() == 0:
            raise ValueError(f"tensors[{k}] is empty (shape {list(x.shape)})")
        if x.device != tensors[0].device:  # before the index checks, which read index values
            raise ValueError(
                f"all tensors must be on one device: tensors[0] is on {tensors[0].device}, tensors[{k}] on {x.device}"
            )
        dims = []
        for dname, d, idx in (("out_dims", od[k], oi[k]), ("in_dims", id_[k], ii[k])):
            if not isinstance(d, int):
                raise TypeError(f"{dname}[{k}] must be an int, got {type(d).__name__}")
            if idx is not None and not -x.dim() <= d < x.dim():
                raise ValueError(f"{dname}[{k}]={d} is out of range for tensors[{k}] with {x.dim()} dims")
            dims.append(d % x.dim() if x.dim() else 0)
        if oi[k] is not None and ii[k] is not None and dims[0] == dims[1]:
            raise ValueError(f"out_dims[{k}] and in_dims[{k}] are both {dims[0]}: give two different dims")
        i1 = _check_index(oi[k], x, dims[0], f"out_idx[{k}]" if n > 1 else "out_idx", check_indices, checked)
        i2 = _check_index(ii[k], x, dims[1], f"in_idx[{k}]" if n > 1 else "in_idx", check_indices, checked)
        xs.append(x)
        i1s.append(i1)
        i2s.append(i2)
        d1s.append(dims[0])
        d2s.append(dims[1])
    device = xs[0].device
    # The gather is a copy: the kernels move elements of 1, 2, 4 or 8 bytes, whatever their dtype.
    kernel_ok = all(x.element_size() in (1, 2, 4, 8) and not x.is_complex() for x in xs)
    allow = _backend.BACKENDS if kernel_ok else ("reference",)
    chosen = "reference" if (backend == "auto" and not kernel_ok) else _backend.resolve(backend, device, allow=allow)
    return _run_gather(chosen, xs, i1s, i2s, d1s, d2s)


@torch.no_grad()
def _run_gather(chosen: str, xs, i1s, i2s, d1s, d2s) -> List[Tensor]:
    if chosen != "reference":  # the kernels read contiguous tensors; the reference any
        xs = [x.contiguous() for x in xs]
    return list(_OPS["gather"][chosen](xs, i1s, i2s, d1s, d2s))


def gather_channels(
    x: Tensor,
    out_idx: Optional[Tensor] = None,
    in_idx: Optional[Tensor] = None,
    *,
    out_dim: int = 0,
    in_dim: int = 1,
    backend: str = "auto",
    check_indices: bool = True,
) -> Tensor:
    """``x[out_idx][:, in_idx]`` along ``out_dim``/``in_dim`` in one pass, as a new contiguous tensor."""
    _check_tensor(x, "x")
    try:
        return gather_many(
            [x], [out_idx], [in_idx], out_dims=[out_dim], in_dims=[in_dim],
            backend=backend, check_indices=check_indices,
        )[0]
    except (TypeError, ValueError) as exc:
        msg = str(exc).replace("tensors[0]", "x").replace("out_dims[0]", "out_dim").replace("in_dims[0]", "in_dim")
        raise type(exc)(msg) from None
