"""Tests of the Triton backend (mtlkernels.triton_ops) against the pure-PyTorch reference.

Without a GPU the kernels run on CPU tensors under the Triton interpreter: TRITON_INTERPRET must be
set before Triton decorates the kernels (when mtlkernels.triton_ops is imported), hence the very top
of this module. Sizes are small: the interpreter runs every program in Python.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import contextlib  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("triton")

with warnings.catch_warnings():  # the compiled extension may be missing: not needed here
    warnings.simplefilter("ignore", RuntimeWarning)
    import mtlkernels  # noqa: F401
    from mtlkernels import _backend, ops, reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_WHY = _backend.unavailable_reason("triton", DEVICE)
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"triton backend unavailable: {_WHY}")

if _WHY is None:
    from mtlkernels import triton_ops

    if DEVICE.type == "cpu" and not triton_ops.INTERPRET:
        # Triton decorated the kernels without the interpreter (mtlkernels.triton_ops was imported
        # before TRITON_INTERPRET=1 was set, e.g. by another test module): the ops would silently
        # use the reference on CPU, and these tests would compare the reference with itself.
        pytestmark = pytest.mark.skip(
            reason="mtlkernels.triton_ops was imported before TRITON_INTERPRET=1 was set; "
                   "set it in conftest.py (before anything imports mtlkernels)")

HALF = (torch.float16, torch.bfloat16)
# The oracle is the reference on the *same* (possibly half) inputs upcast to float64, so the only
# error left is the kernels' float32 accumulation: the tolerances are relative to the largest value.
RTOL = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-4}


@contextlib.contextmanager
def poisoned():
    """torch.empty outputs come back NaN-filled (ints: max value): a kernel that skips an output
    element is caught by the comparison / the NaN check."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill


def _close(got, ref, dtype, name=""):
    assert got.dtype == torch.float32, (name, got.dtype)
    assert got.device.type == DEVICE.type, name
    assert got.shape == ref.shape, (name, got.shape, ref.shape)
    assert not torch.isnan(got).any(), f"{name}: NaN in the output (an element was not written)"
    rtol = RTOL[dtype]
    scale = float(ref.abs().max()) if ref.numel() else 1.0
    torch.testing.assert_close(got.cpu().double(), ref.cpu(), rtol=rtol, atol=rtol * max(scale, 1e-30),
                               msg=lambda m: f"{name}: {m}")


def _layers(shapes, t, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(s, generator=g).to(dtype).to(DEVICE) for s in shapes]
    gs = [torch.randn((t,) + tuple(s), generator=g).to(dtype).to(DEVICE) for s in shapes]
    return ws, gs


def _check_stats(ws, gs, dtype):
    with poisoned():
        got = ops.filter_stats_many(ws, gs, backend="triton")
    ref = ops.filter_stats_many([w.double() for w in ws],
                                [[x.double() for x in g] if isinstance(g, (list, tuple)) else g.double()
                                 for g in gs], backend="reference")
    assert got.offsets == ref.offsets
    for name, a, b in zip(("dot", "gram", "wsq", "wabs", "wg2"), got.tensors(), ref.tensors()):
        _close(a, b, dtype, name)
    # the Gram matrices are symmetric with the squared gradient norms on the diagonal
    torch.testing.assert_close(got.gram, got.gram.transpose(1, 2))


# ------------------------------------------------------------------------------ filter_stats
NET = [(5, 3, 3, 3), (7, 11), (9,)]          # conv, linear, per-channel (1-D) layers


@pytest.mark.parametrize("t", [1, 2, 3, 5, 8, 11, 16])
def test_filter_stats_multilayer_fp32(t):
    ws, gs = _layers(NET, t, torch.float32, seed=t)
    _check_stats(ws, gs, torch.float32)


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (4, 1), (3, 7), (2, 37), (6, 2, 1, 1), (2, 300)],
                         ids=lambda s: "x".join(map(str, s)))
def test_filter_stats_odd_sizes(shape):
    ws, gs = _layers([shape], 3, torch.float32, seed=len(shape) * 100 + shape[-1])
    _check_stats(ws, gs, torch.float32)


@pytest.mark.parametrize("t", [4, 6, 7, 9, 10, 12, 13, 14, 15])
def test_filter_stats_every_task_count(t):
    """The pair path (T not a power of two: one product per pair i <= j) and the full TP x TP path
    for the task counts the other tests leave out, aligned (K % 4 == 0, the vector-load promise)
    and unaligned rows in one call."""
    ws, gs = _layers([(3, 8), (2, 37), (4, 2, 2, 1)], t, torch.float32, seed=100 + t)
    _check_stats(ws, gs, torch.float32)


def test_filter_stats_alignment_flag():
    """tl.multiple_of is promised only when every row of every tensor starts on 16 bytes."""
    ws, gs = _layers([(3, 8), (2, 4)], 3, torch.float32, seed=1)
    host = torch.ops.mtlkernels._filter_stats_table(ws, gs, True)
    assert triton_ops._rows_aligned(host, 2, 3, 4)
    ws2, gs2 = _layers([(3, 8), (2, 5)], 3, torch.float32, seed=1)      # K=5: rows at 20-byte steps
    assert not triton_ops._rows_aligned(torch.ops.mtlkernels._filter_stats_table(ws2, gs2, True), 2, 3, 4)
    off = torch.randn(1, 3 * 8 + 1)[:, 1:].view(3, 8)                  # a weight at +4 bytes
    host = torch.ops.mtlkernels._filter_stats_table([off], [gs[0]], True)
    assert not triton_ops._rows_aligned(host, 1, 3, 4)


def _unspecialised(kernel, what="do_not_specialize"):
    if hasattr(kernel, "kwargs"):   # the interpreter keeps the decorator's arguments
        return set(kernel.kwargs.get(what) or ())
    return {kernel.arg_names[i] if isinstance(i, int) else i for i in getattr(kernel, what)}


def test_sizes_do_not_specialise():
    """Integer sizes are not specialised (a value equal to 1 or divisible by 16 would compile a new
    variant as pruning shrinks C, mid-training); filter_stats takes K and the row count from its table
    and grid, the gather its sizes from its table; channel_contrib keeps only the unit-stride
    specialisation (contiguous loads), not the one on divisibility by 16."""
    assert {"T", "L"} <= _unspecialised(triton_ops._filter_stats_kernel)
    assert {"C", "S", "P", "CHUNK", "a_sn", "a_sc", "a_ss", "d_sn", "d_sc", "d_ss"} <= _unspecialised(
        triton_ops._channel_contrib_kernel, "do_not_specialize_on_alignment")
    assert {"N", "STARTS", "ERR"} <= _unspecialised(triton_ops._gather_kernel)


def test_filter_stats_sixteen_tasks():
    ws, gs = _layers([(3, 5), (2, 37), (2, 3, 1, 3), (1,)], 16, torch.float32, seed=16)
    _check_stats(ws, gs, torch.float32)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("t", [2, 5])
def test_filter_stats_half(dtype, t):
    ws, gs = _layers(NET + [(2, 37)], t, dtype, seed=7 + t)
    _check_stats(ws, gs, dtype)


def test_filter_stats_noncontiguous_and_list_grads():
    g = torch.Generator().manual_seed(3)
    t = 3
    w_t = torch.randn(11, 7, generator=g).to(DEVICE).t()                      # [7, 11] transposed
    grads_t = [torch.randn(11, 7, generator=g).to(DEVICE).t() for _ in range(t)]  # list of views
    w_s = torch.randn(4, 3, 6, 6, generator=g).to(DEVICE)[:, :, ::2, 1::2]   # sliced conv [4,3,3,3]
    grads_s = torch.randn(t, 4, 3, 6, 6, generator=g).to(DEVICE)[..., ::2, 1::2]
    w_c = torch.randn(5, generator=g).to(DEVICE)
    grads_c = torch.randn(t, 5, generator=g).to(DEVICE)
    assert not w_t.is_contiguous() and not w_s.is_contiguous()
    _check_stats([w_t, w_s, w_c], [grads_t, grads_s, grads_c], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_filter_stats_stacked_channels_last_in_place(dtype):
    """The raw Triton op reads stacked [T, F, ...] gradients (task t at base + t * stride(0), here
    interleaved) and channels_last / permuted dense rows in place; the public call passes them on
    without copies (its fast path), and both agree with the reference."""
    g = torch.Generator().manual_seed(21)
    t = 3

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype).to(DEVICE)

    ws = [r(5, 3, 3, 3).to(memory_format=torch.channels_last), r(7, 4, 3).transpose(1, 2)]
    gs = [r(t, 5, 3, 3, 3).permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3),
          r(2 * t, 7, 4, 3).transpose(2, 3)[::2]]
    ref = reference.filter_stats([w.double() for w in ws], [x.double() for x in gs])
    for grads in (gs, [x for stack in gs for x in stack.unbind(0)]):
        with poisoned():
            got = torch.ops.mtlkernels.filter_stats_triton(ws, grads)
        for name, a, b in zip(("dot", "gram", "wsq", "wabs", "wg2"), got, ref):
            _close(a, b, dtype, name)
    assert ops._filter_stats_fast(ws, gs, "triton") is not None
    with pytest.raises(RuntimeError, match=r"grads\[0\] must have the strides of weights\[0\]"):
        torch.ops.mtlkernels.filter_stats_triton(ws[:1], [gs[0].contiguous()])


def test_filter_stats_single_layer_api():
    g = torch.Generator().manual_seed(11)
    w = torch.randn(6, 2, 3, generator=g).to(DEVICE)
    gr = torch.randn(4, 6, 2, 3, generator=g).to(DEVICE)
    got = ops.filter_stats(w, gr, backend="triton")
    ref = ops.filter_stats(w.double(), gr.double(), backend="reference")
    for a, b in zip(got.tensors(), ref.tensors()):
        _close(a, b, torch.float32)


def test_filter_stats_propagates_nan():
    w = torch.randn(3, 4, device=DEVICE)
    gr = torch.randn(2, 3, 4, device=DEVICE)
    gr[1, 2, 0] = float("nan")
    got = ops.filter_stats(w, gr, backend="triton")
    assert torch.isnan(got.dot[2, 1]) and not torch.isnan(got.dot[:2]).any()
    assert not torch.isnan(got.dot[2, 0])


# ------------------------------------------------------------------------------ channel_contrib
def _check_contrib(act, grad, dtype):
    with poisoned():
        got = ops.channel_contrib(act, grad, backend="triton")
    ref = reference.channel_contrib(act.double(), grad.double())
    _close(got, ref, dtype, "contrib")


@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (1, 1, 1, 1), (3, 37, 2, 1), (4, 6), (2, 3, 7)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "mixed"])
def test_channel_contrib_layouts(shape, layout):
    g = torch.Generator().manual_seed(sum(shape))
    act = torch.randn(shape, generator=g).to(DEVICE)
    grad = torch.randn(shape, generator=g).to(DEVICE)
    if len(shape) == 4 and layout != "nchw":
        act = act.to(memory_format=torch.channels_last)
        if layout == "channels_last":
            grad = grad.to(memory_format=torch.channels_last)
    elif len(shape) != 4 and layout != "nchw":
        act = act.transpose(0, 1).contiguous().transpose(0, 1)  # channel-major storage
    _check_contrib(act, grad, torch.float32)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_channel_contrib_half(dtype):
    g = torch.Generator().manual_seed(5)
    act = torch.randn(3, 6, 5, 5, generator=g).to(dtype).to(DEVICE).to(memory_format=torch.channels_last)
    grad = torch.randn(3, 6, 5, 5, generator=g).to(dtype).to(DEVICE)
    _check_contrib(act, grad, dtype)


@pytest.mark.parametrize("shape", [(5, 3, 7, 7), (40, 2, 33), (2, 3, 1, 31), (33, 2, 64)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_channel_contrib_row_walk(shape, layout, monkeypatch):
    """Rows of S >= cc_rows_min_s walk (n, s) row by row (no division per element), split
    boundaries falling inside rows (small tiles force many splits); shorter rows divide."""
    monkeypatch.setitem(triton_ops.TUNE, "cc_max_block_p", 16)
    g = torch.Generator().manual_seed(len(shape) + shape[-1])
    act = torch.randn(shape, generator=g).to(DEVICE)
    grad = torch.randn(shape, generator=g).to(DEVICE)
    if layout == "channels_last":
        act = act.transpose(0, 1).contiguous().transpose(0, 1)   # channel-major storage
        grad = grad.transpose(0, 1).contiguous().transpose(0, 1)
    _check_contrib(act, grad, torch.float32)


def test_channel_contrib_many_positions_splits():
    """Enough positions that the work is split over several programs (partial rows summed)."""
    g = torch.Generator().manual_seed(9)
    act = torch.randn(3, 2, 40, 40, generator=g).to(DEVICE)
    grad = torch.randn(3, 2, 40, 40, generator=g).to(DEVICE).to(memory_format=torch.channels_last)
    _check_contrib(act, grad, torch.float32)
    # deterministic: bitwise the same result twice
    a = ops.channel_contrib(act, grad, backend="triton")
    b = ops.channel_contrib(act, grad, backend="triton")
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------ gather
GATHER_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                 torch.int32, torch.int8, torch.uint8, torch.bool]


def _rand(shape, dtype, g):
    if dtype == torch.bool:
        return (torch.rand(shape, generator=g) > 0.5).to(DEVICE)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype).to(DEVICE)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=g).to(dtype).to(DEVICE)


def _subset(n, g, k=None):
    """A random permuted subset of range(n) (unique indices, not sorted)."""
    k = k if k is not None else max(1, n // 2 + 1)
    return torch.randperm(n, generator=g)[:k].to(DEVICE)


def _check_gather(xs, oi, ii, od, id_):
    with poisoned():
        got = ops.gather_many(xs, oi, ii, out_dims=od, in_dims=id_, backend="triton")
    ref = ops.gather_many(xs, oi, ii, out_dims=od, in_dims=id_, backend="reference")
    assert len(got) == len(ref)
    for k, (a, b, x) in enumerate(zip(got, ref, xs)):
        assert a.dtype == x.dtype and a.device == x.device, k
        assert a.shape == b.shape, (k, a.shape, b.shape)
        assert a.is_contiguous(), k
        assert torch.equal(a, b), f"tensor {k} ({x.dtype}, {list(x.shape)}) differs"
        if x.numel():
            assert a.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()


@pytest.mark.parametrize("dtype", GATHER_DTYPES, ids=str)
def test_gather_dtypes_conv_linear_bias(dtype):
    g = torch.Generator().manual_seed(GATHER_DTYPES.index(dtype))
    conv = _rand((6, 5, 3, 3), dtype, g)
    lin = _rand((7, 6), dtype, g)
    bias = _rand((6,), dtype, g)
    _check_gather(
        [conv, lin, bias],
        [_subset(6, g), _subset(7, g), _subset(6, g, 2)],
        [_subset(5, g, 3), _subset(6, g, 4), None],
        [0, 0, 0], [1, 1, 0],
    )


@pytest.mark.parametrize(
    "shape,od,id_,has_out,has_in",
    [
        ((6, 5, 3, 3), 0, 1, True, True),       # conv
        ((5, 6, 3, 3), 1, 0, True, True),       # transposed conv [C_in, C_out, kh, kw]
        ((6, 1, 3, 3), 0, 1, True, False),      # depthwise: in_idx None
        ((6, 5, 3, 3), 0, 1, False, True),      # only the input channels
        ((4, 6, 5), 2, 0, True, True),          # far dims, reversed order
        ((4, 6, 5), -1, 1, True, True),         # negative dim
        ((9,), 0, 1, True, False),              # 1-D (bias / BN)
        ((9,), 0, 0, False, False),             # nothing gathered: a copy
        ((1, 1), 0, 1, True, True),             # single elements
    ],
)
def test_gather_dim_combinations(shape, od, id_, has_out, has_in):
    g = torch.Generator().manual_seed(len(shape) * 10 + od)
    x = _rand(shape, torch.float32, g)
    d_out, d_in = od % len(shape), id_ % len(shape)
    oi = _subset(shape[d_out], g) if has_out else None
    ii = _subset(shape[d_in], g) if has_in else None
    _check_gather([x], [oi], [ii], [od], [id_])


def test_gather_mixed_element_sizes_one_call():
    """Tensors of 1, 2, 4 and 8-byte dtypes in one gather_many (one launch per element size)."""
    g = torch.Generator().manual_seed(21)
    dtypes = [torch.float32, torch.bool, torch.float16, torch.int64, torch.bfloat16, torch.float64,
              torch.float32]
    xs = [_rand((5, 4, 2), dt, g) for dt in dtypes]
    oi = [_subset(5, g) for _ in xs]
    ii = [_subset(4, g) if k % 2 == 0 else None for k in range(len(xs))]
    _check_gather(xs, oi, ii, [0] * len(xs), [1] * len(xs))


def test_gather_several_blocks_per_tensor():
    """Tensors larger than one program's block, next to a small one, in one launch."""
    g = torch.Generator().manual_seed(13)
    big = _rand((40, 8, 3, 3), torch.float32, g)
    small = _rand((3, 2), torch.float32, g)
    big16 = _rand((8, 40, 3, 3), torch.bfloat16, g)
    _check_gather([big, small, big16], [_subset(40, g, 31), _subset(3, g), _subset(40, g, 33)],
                  [_subset(8, g, 7), None, _subset(8, g, 8)], [0, 0, 1], [1, 1, 0])


def test_gather_block_search_many_tensors(monkeypatch):
    """Eleven tensors of three element sizes with several small blocks each: every program finds
    its tensor by the binary search over the table's block map (4 steps), and an out-of-range
    index is reported for the right tensor (by the table builder for CPU index tensors, as here,
    by the kernel's error word for CUDA ones)."""
    monkeypatch.setitem(triton_ops.TUNE, "gather_block", 16)
    g = torch.Generator().manual_seed(21)
    dtypes = [torch.float32, torch.bfloat16, torch.int64]
    xs = [_rand((3 + k, 2 + k % 4, 3), dtypes[k % 3], g) for k in range(11)]
    oi = [_subset(x.shape[0], g) if k % 4 else None for k, x in enumerate(xs)]
    ii = [_subset(x.shape[1], g) for x in xs]
    _check_gather(xs, oi, ii, [0] * 11, [1] * 11)
    bad = list(ii)
    bad[7] = torch.tensor([0, xs[7].shape[1]], device=DEVICE)     # one past the end
    with pytest.raises(RuntimeError, match=r"idx2\[7\].* out of range|an index of xs\[7\]"):
        torch.ops.mtlkernels.gather_triton(xs, oi, bad, [0] * 11, [1] * 11)


def test_gather_kernel_flags_a_bad_index(monkeypatch):
    """The kernel's own check (what guards CUDA index tensors, whose values the host never reads):
    an index made out of range after the table was built is never loaded from, and raises."""
    g = torch.Generator().manual_seed(22)
    xs = [_rand((4, 3), torch.float32, g), _rand((5, 2), torch.float32, g)]
    idx = [torch.tensor([1, 2], device=DEVICE), torch.tensor([0, 4], device=DEVICE)]
    real = torch.ops.mtlkernels._gather_table

    def corrupt_after_build(*args):
        out = real(*args)
        idx[1][1] = 5       # the table holds the index's address: the kernel reads the new value
        return out

    monkeypatch.setattr(torch.ops.mtlkernels, "_gather_table", corrupt_after_build)
    with pytest.raises(RuntimeError, match=r"gather_triton: an index of xs\[1\]"):
        triton_ops._gather_impl(xs, idx, [None, None], [0, 0], [1, 1])


def test_gather_noncontiguous_input_and_full_index():
    g = torch.Generator().manual_seed(4)
    x = _rand((5, 8), torch.float32, g).t()                     # [8, 5] non-contiguous
    _check_gather([x, x], [_subset(8, g), torch.arange(8, device=DEVICE).flip(0)],
                  [_subset(5, g), torch.arange(5, device=DEVICE)], [0, 0], [1, 1])


def test_gather_channels_single_api():
    g = torch.Generator().manual_seed(8)
    x = _rand((5, 6, 3, 3), torch.float16, g)
    oi, ii = _subset(6, g), _subset(5, g)
    got = ops.gather_channels(x, oi, ii, out_dim=1, in_dim=0, backend="triton")
    assert torch.equal(got, x.index_select(1, oi).index_select(0, ii))


# ------------------------------------------------------------------------------ op registration
def _small_inputs():
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(3, 4, generator=g).to(DEVICE), torch.randn(2, 3, generator=g).to(DEVICE)]
    gs = [torch.randn(3, 4, generator=g).to(DEVICE) for _ in range(2)]
    gs += [torch.randn(2, 3, generator=g).to(DEVICE) for _ in range(2)]
    act = torch.randn(2, 3, 4, generator=g).to(DEVICE)
    grad = torch.randn(2, 3, 4, generator=g).to(DEVICE)
    x = torch.randn(4, 3, 2, generator=g).to(DEVICE)
    i1 = torch.tensor([2, 0], device=DEVICE)
    i2 = torch.tensor([1], device=DEVICE)
    return ws, gs, act, grad, x, i1, i2


def test_ops_are_registered():
    for name in ("filter_stats_triton", "channel_contrib_triton", "gather_triton"):
        assert hasattr(torch.ops.mtlkernels, name), name


def test_opcheck():
    ws, gs, act, grad, x, i1, i2 = _small_inputs()
    # the schema/fake/dispatch checks only; the ops have no autograd formula (they are not
    # differentiable statistics), which opcheck's autograd check accepts for outputs without grad.
    tests = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.mtlkernels.filter_stats_triton.default, (ws, gs), test_utils=tests)
    torch.library.opcheck(torch.ops.mtlkernels.channel_contrib_triton.default, (act, grad), test_utils=tests)
    torch.library.opcheck(torch.ops.mtlkernels.gather_triton.default,
                          ([x, x], [i1, None], [i2, i2], [0, 2], [1, 1]), test_utils=tests)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    """The ops are opaque graph nodes (their pointer tables need real addresses, which FakeTensors
    lack), so a compiled graph calls them as they are: this works on CPU under the interpreter too.
    The inductor graph holds only the ops (no pointwise code to compile: keeps the test fast)."""
    ws, gs, act, grad, x, i1, i2 = _small_inputs()

    def f(ws, gs, act, grad, x, i1, i2):
        dot, gram, wsq, wabs, wg2 = torch.ops.mtlkernels.filter_stats_triton(ws, gs)
        contrib = torch.ops.mtlkernels.channel_contrib_triton(act, grad)
        (y,) = torch.ops.mtlkernels.gather_triton([x], [i1], [i2], [0], [1])
        if backend == "inductor":
            return dot, gram, wsq, wabs, wg2, contrib, y
        return dot * 2 + 1, gram.sum(), wsq - wabs, wg2, contrib * 3, y + 1

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    got = compiled(ws, gs, act, grad, x, i1, i2)
    want = f(ws, gs, act, grad, x, i1, i2)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_cpu_without_interpreter_falls_back_to_reference(monkeypatch):
    """CPU tensors without TRITON_INTERPRET: the ops compute with mtlkernels.reference."""
    monkeypatch.setattr(triton_ops, "INTERPRET", False)
    ws, gs, act, grad, x, i1, i2 = _small_inputs()
    ws, gs, act, grad, x, i1, i2 = (v.cpu() if isinstance(v, torch.Tensor) else [e.cpu() for e in v]
                                    for v in (ws, gs, act, grad, x, i1, i2))
    got = triton_ops.filter_stats(ws, gs)
    for a, b in zip(got, reference.filter_stats(ws, gs)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(triton_ops.channel_contrib(act, grad), reference.channel_contrib(act, grad))
    assert torch.equal(triton_ops.gather([x], [i1], [i2], [0], [1])[0],
                       reference.gather([x], [i1], [i2], [0], [1])[0])


# ------------------------------------------------------------------------------ device guard
def test_device_guard_is_the_tensors_device():
    guard = triton_ops._device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(triton_ops._device_guard(torch.device("cpu")), contextlib.nullcontext)


def test_launches_and_table_copies_run_inside_the_device_guard(monkeypatch):
    """Triton launches on the current device and stream, and a table copy goes to its destination
    device's current stream: with tensors on cuda:1 and cuda:0 current, GPU 0 would get GPU 1
    addresses, and the copy and the launch would sit on different streams. So every launch and
    every table copy must happen inside the guard of the tensors' device."""
    entered, depth, events = [], [], []

    @contextlib.contextmanager
    def guard(device):
        entered.append(device)
        depth.append(1)
        try:
            yield
        finally:
            depth.pop()

    real_wrap, real_copy = torch.library.wrap_triton, triton_ops._to_device

    def wrap(kernel):
        launcher = real_wrap(kernel)

        class Grid:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    events.append(("launch", bool(depth)))
                    return launcher[grid](*args, **kwargs)
                return launch
        return Grid()

    def copy(host, device):
        events.append(("copy", bool(depth)))
        return real_copy(host, device)

    monkeypatch.setattr(triton_ops, "_device_guard", guard)
    monkeypatch.setattr(torch.library, "wrap_triton", wrap)
    monkeypatch.setattr(triton_ops, "_to_device", copy)
    ws, gs, act, grad, x, i1, i2 = _small_inputs()
    torch.ops.mtlkernels.filter_stats_triton(ws, gs)
    torch.ops.mtlkernels.channel_contrib_triton(act, grad)
    torch.ops.mtlkernels.gather_triton([x], [i1], [i2], [0], [1])
    assert entered == [DEVICE] * 3
    assert sorted({kind for kind, _ in events}) == ["copy", "launch"]
    assert all(inside for _, inside in events), events
