"""Every compiled op x backend against the float64 reference.

Random inputs (never zeros), odd sizes, float32/float16/bfloat16, non-contiguous and channels_last
inputs, outputs poisoned with NaN before the call (the ``poison`` fixture). The reference runs on
the same low-precision values upcast to float64, so the only allowed difference is float32
accumulation order. Triton on CPU (interpreter) is covered in test_triton.py with smaller sizes.
"""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from mtlkernels import ops
from conftest import compiled_backends

BACKENDS = compiled_backends()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
if not BACKENDS:  # pragma: no cover - the extension failed to build
    pytest.skip("no compiled backend available", allow_module_level=True)


def rel_err(out, ref):
    out, ref = out.double().cpu(), ref.double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check_close(out, ref, tol=3e-5, name=""):
    assert out.dtype == torch.float32, name
    assert out.shape == ref.shape, name
    assert not torch.isnan(out).any(), f"{name}: unwritten (poisoned) or NaN elements"
    assert rel_err(out, ref) < tol, f"{name}: relative error {rel_err(out, ref):.2e}"
    torch.testing.assert_close(out.double().cpu(), ref.double().cpu(), rtol=1e-3, atol=1e-4 * ref.abs().max().item())


def layer_set(kind, device, dtype, gen):
    """Weights of odd shapes, some non-contiguous."""
    def r(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    if kind == "odd":
        return [r(5, 3, 3, 3), r(7, 11), r(9), r(1, 37), r(3, 1), r(2, 13, 1, 1)]
    if kind == "noncontig":
        return [r(11, 6).t(), r(4, 6, 3, 3)[:, ::2], r(3, 5, 3, 3).to(memory_format=torch.channels_last)]
    if kind == "large":  # K not a multiple of any vector width, and K larger than the CPU chunk
        return [r(19, 1031), r(3, 64, 3, 3), r(33, 8)]
    raise ValueError(kind)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 6, 7, 8, 11, 16])
@pytest.mark.parametrize("kind", ["odd", "noncontig", "large"])
def test_filter_stats_many(device, backend, dtype, T, kind, poison):
    gen = torch.Generator().manual_seed(1000 * T + len(kind))
    weights = layer_set(kind, device, dtype, gen)
    # gradients: a stacked [T, ...] tensor for some layers, a list of (non-contiguous) tensors for others
    grads = []
    for l, w in enumerate(weights):
        g = torch.randn(T, *w.shape, generator=gen).to(device=device, dtype=dtype)
        grads.append(g if l % 2 == 0 else [gt.transpose(0, -1).contiguous().transpose(0, -1) for gt in g])
    out = ops.filter_stats_many(weights, grads, backend=backend)
    ref = ops.filter_stats_many(
        [w.double() for w in weights],
        [g.double() if torch.is_tensor(g) else [x.double() for x in g] for g in grads],
        backend="reference",
    )
    assert out.offsets == ref.offsets
    for name, a, b in zip(ops.STAT_FIELDS, out.tensors(), ref.tensors()):
        check_close(a, b, name=f"{name} T={T} {dtype}")
    assert out.gram.transpose(1, 2).equal(out.gram) and out.wg2.transpose(1, 2).equal(out.wg2)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_filter_stats_single_layer_matches_many(device, backend):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(6, 4, 3, 3, generator=gen).to(device)
    g = torch.randn(3, 6, 4, 3, 3, generator=gen).to(device)
    one = ops.filter_stats(w, g, backend=backend)
    many = ops.filter_stats_many([w, w[:2]], [g, g[:, :2]], backend=backend)
    for a, b in zip(one.tensors(), many.per_layer()[0].tensors()):
        torch.testing.assert_close(a, b)


def dense_row_layers(device, dtype, T, gen):
    """(weights, stacked grads, per-task grads) in layouts the ops read without a copy: rows dense
    (row f = the K elements at f * K) in varied element orders, each G_t with its weight's strides."""
    def r(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    ws, gs = [], []
    # channels_last conv, its stacked gradient channels_last per task
    ws.append(r(5, 3, 3, 3).to(memory_format=torch.channels_last))
    gs.append(r(T, 5, 3, 3, 3).permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3))
    # inner dims transposed (dense rows, neither contiguous nor channels_last); tasks interleaved
    # with a task stride of two stacks (base + t * stride(0), stride(0) != F * K)
    ws.append(r(7, 4, 3).transpose(1, 2))
    gs.append(r(2 * T, 7, 4, 3).transpose(2, 3)[::2])
    # one filter whose dim-0 stride is meaningless; a 1x1 conv (K = C) channels_last
    ws.append(r(9, 1).t())
    gs.append(r(T, 9, 1).transpose(1, 2))
    ws.append(r(6, 13, 1, 1).to(memory_format=torch.channels_last))
    gs.append(r(T, 6, 13, 1, 1))
    assert not ws[0].is_contiguous() and not ws[1].is_contiguous() and not gs[1].is_contiguous()
    flat = [g for stack in gs for g in stack.unbind(0)]
    return ws, gs, flat


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in BACKENDS if b != "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 3, 9])
def test_raw_filter_stats_stacked_and_dense_row_layouts(device, backend, dtype, T, poison):
    """The op reads stacked [T, F, ...] gradients and dense-row layouts (channels_last, ...) in
    place, in both gradient forms, and the public call hands them over without copies."""
    gen = torch.Generator().manual_seed(77 + T)
    ws, stacked, flat = dense_row_layers(device, dtype, T, gen)
    ref = ops.filter_stats_many([w.double() for w in ws], [g.double() for g in stacked], backend="reference")
    for grads in (stacked, flat):
        out = torch.ops.mtlkernels.filter_stats(ws, grads)
        for name, a, b in zip(ops.STAT_FIELDS, out, ref.tensors()):
            check_close(a, b, name=f"{name} T={T} {dtype} stacked={grads is stacked}")
    assert ops._filter_stats_fast(ws, stacked, backend) is not None  # no copy, no checked path
    assert ops._filter_stats_fast(ws, [list(g.unbind(0)) for g in stacked], backend) is not None


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_filter_stats_copies_only_unreadable_layouts(device, backend):
    """A gradient whose strides differ from its weight's, or a weight without dense rows, is
    refused by the op and copied by the public call, which still agrees with the reference."""
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(4, 3, 5, 5, generator=gen).to(device).to(memory_format=torch.channels_last)
    g = torch.randn(2, 4, 3, 5, 5, generator=gen).to(device)          # contiguous tasks
    w_strided = torch.randn(4, 6, 5, generator=gen).to(device)[:, ::2]  # rows not dense
    g_strided = torch.randn(2, 4, 3, 5, generator=gen).to(device)
    g_cl = g.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)  # channels_last per task
    raw = torch.ops.mtlkernels.filter_stats if backend != "triton" else torch.ops.mtlkernels.filter_stats_triton
    with pytest.raises(RuntimeError, match=r"grads\[0\] must have the strides of weights\[0\]"):
        raw([w], [g])
    with pytest.raises(RuntimeError, match=r"grads\[1\] must have the strides of weights\[0\]"):
        raw([w], [g[0].contiguous(memory_format=torch.channels_last), g[1]])
    with pytest.raises(RuntimeError, match=r"weights\[1\] must have dense rows"):
        raw([w, w_strided], [g_cl, g_strided])
    with pytest.raises(RuntimeError, match=r"grads\[1\] must be a \[T=2, \.\.\.\] stack"):
        raw([w, w_strided.contiguous()], [g_cl, g_strided[:1]])
    out = ops.filter_stats_many([w, w_strided], [g, g_strided], backend=backend)
    ref = ops.filter_stats_many([w.double(), w_strided.double()], [g.double(), g_strided.double()],
                                backend="reference")
    for name, a, b in zip(ops.STAT_FIELDS, out.tensors(), ref.tensors()):
        check_close(a, b, name=name)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_filter_stats_propagates_nan(device, backend):
    w = torch.randn(4, 5, device=device)
    g = torch.randn(2, 4, 5, device=device)
    g[1, 2, 3] = float("nan")
    s = ops.filter_stats(w, g, backend=backend)
    assert torch.isnan(s.dot[2, 1]) and torch.isnan(s.gram[2, 1, 1]) and not torch.isnan(s.dot[1]).any()


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,layout",
    [((4, 6, 5, 7), "nchw"), ((4, 6, 5, 7), "channels_last"), ((3, 10), "nchw"), ((2, 5, 33), "nchw"),
     ((1, 1, 1, 1), "nchw"), ((2, 37, 3, 3), "channels_last"), ((3, 8, 6, 4), "sliced"),
     ((2, 3, 4, 5, 6), "nchw")],
)
def test_channel_contrib(device, backend, dtype, shape, layout, poison):
    gen = torch.Generator().manual_seed(sum(shape))
    a = torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)
    d = torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)
    if layout == "channels_last":
        a, d = a.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    elif layout == "sliced":  # non-contiguous along channels and width
        a, d = a[:, ::2, :, ::2], d[:, 1::2, :, 1::2]
    out = ops.channel_contrib(a, d, backend=backend)
    ref = ops.channel_contrib(a.double(), d.double(), backend="reference")
    check_close(out, ref, name=f"contrib {shape} {layout}")


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_channel_contrib_large(device, backend, poison):
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(8, 24, 33, 31, generator=gen).to(device)
    d = torch.randn(8, 24, 33, 31, generator=gen).to(device)
    for x, y in ((a, d), (a.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last))):
        check_close(ops.channel_contrib(x, y, backend=backend), ops.channel_contrib(a.double(), d.double(), backend="reference"))


def rand_subset(n, gen, k=None):
    k = k if k is not None else int(torch.randint(1, n + 1, (1,), generator=gen))
    return torch.randperm(n, generator=gen)[:k]


def rand_tensor(shape, dtype, gen):
    if dtype == torch.bool:
        return torch.rand(*shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        return torch.randn(*shape, generator=gen).to(dtype)
    return torch.randint(-1000, 1000, shape, generator=gen).to(dtype)


GATHER_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool]


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("dtype", GATHER_DTYPES)
def test_gather_many_layers(device, backend, dtype):
    """A compaction step: conv, depthwise conv, transposed conv, linear, BN vectors, in one call."""
    gen = torch.Generator().manual_seed(11)
    conv = rand_tensor((13, 7, 3, 3), dtype, gen)
    dw = rand_tensor((13, 1, 3, 3), dtype, gen)
    tconv = rand_tensor((13, 5, 4, 4), dtype, gen)    # ConvTranspose2d: [C_in, C_out, kh, kw]
    lin = rand_tensor((9, 13 * 4), dtype, gen)         # flatten -> linear: channel = 4 features
    bn = rand_tensor((13,), dtype, gen)
    o = rand_subset(13, gen, 6)
    i = rand_subset(7, gen, 3)
    t_out = rand_subset(5, gen, 2)
    feat = (o[:, None] * 4 + torch.arange(4)).flatten()
    xs = [conv, dw, tconv, lin, bn, conv[:, :4].contiguous()]
    xs = [x.to(device) for x in xs]
    outs = ops.gather_many(
        xs,
        [o, o, t_out, None, o, None],
        [i, None, o, feat, None, i[i < 4]],
        out_dims=[0, 0, 1, 0, 0, 0], in_dims=[1, 1, 0, 1, 1, 1],
        backend=backend,
    )
    refs = [
        conv[o][:, i], dw[o], tconv[:, t_out][o], lin[:, feat], bn[o], conv[:, :4][:, i[i < 4]],
    ]
    for out, ref in zip(outs, refs):
        assert out.is_contiguous() and out.dtype == ref.dtype and out.device.type == device
        assert torch.equal(out.cpu(), ref), (out.shape, ref.shape)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_gather_channels_noncontiguous_and_plain_copy(device, backend):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 10, 3, generator=gen).to(device)[:, ::2]       # non-contiguous [6, 5, 3]
    o, i = torch.tensor([4, 0, 2], device=device), torch.tensor([1, 3], device=device)
    assert torch.equal(ops.gather_channels(x, o, i, backend=backend), x[o][:, i])
    k = torch.tensor([2, 0], device=device)
    assert torch.equal(ops.gather_channels(x, None, k, in_dim=2, backend=backend), x[:, :, k])
    copy = ops.gather_channels(x, backend=backend)   # no index: a contiguous copy
    assert torch.equal(copy, x) and copy.data_ptr() != x.data_ptr()


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=5),
    data=st.data(),
)
def test_gather_property(shape, data):
    """Random shapes, dims and index sets: the compiled gather equals index_select chains."""
    device, backend = BACKENDS[0]
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(*shape, generator=gen).to(device)
    nd = len(shape)
    d1 = data.draw(st.integers(0, nd - 1))
    d2 = data.draw(st.integers(0, nd - 1).filter(lambda d: d != d1)) if nd > 1 else None
    i1 = data.draw(st.permutations(range(shape[d1])).flatmap(lambda p: st.integers(1, len(p)).map(lambda k: p[:k])))
    i1 = torch.tensor(i1, device=device)
    i2 = None
    if d2 is not None and data.draw(st.booleans()):
        i2 = torch.tensor(rand_subset(shape[d2], gen).tolist(), device=device)
    out = ops.gather_channels(x, i1, i2, out_dim=d1, in_dim=d2 if d2 is not None else (d1 + 1) % max(nd, 1), backend=backend)
    ref = x.index_select(d1, i1)
    if i2 is not None:
        ref = ref.index_select(d2, i2)
    assert torch.equal(out, ref)


# ------------------------------------------------------------------ dispatcher integration
def _stats_args(device):
    gen = torch.Generator().manual_seed(2)
    ws = [torch.randn(4, 3, 3, 3, generator=gen).to(device), torch.randn(5, 7, generator=gen).to(device)]
    gs = [torch.randn(4, 3, 3, 3, generator=gen).to(device) for _ in range(2)] + \
         [torch.randn(5, 7, generator=gen).to(device) for _ in range(2)]
    return ws, gs


@pytest.mark.parametrize("device", sorted({d for d, b in BACKENDS if b != "triton"}))
def test_opcheck(device):
    ws, gs = _stats_args(device)
    torch.library.opcheck(torch.ops.mtlkernels.filter_stats.default, (ws, gs))
    ws, stacked, _ = dense_row_layers(device, torch.float32, 3, torch.Generator().manual_seed(4))
    torch.library.opcheck(torch.ops.mtlkernels.filter_stats.default, (ws, stacked))
    a = torch.randn(2, 3, 4, device=device)
    torch.library.opcheck(torch.ops.mtlkernels.channel_contrib.default, (a, torch.randn_like(a)))
    x = torch.randn(5, 4, 3, device=device)
    idx = torch.tensor([3, 0], device=device)
    cols = torch.tensor([2, 0], device=device)  # x[0] is [4, 3]: its dim 1 takes indices < 3
    torch.library.opcheck(torch.ops.mtlkernels.gather.default, ([x, x[0].contiguous()], [idx, None], [None, cols], [0, 0], [1, 1]))


@pytest.mark.parametrize("device", sorted({d for d, b in BACKENDS if b != "triton"}))
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    ws, gs = _stats_args(device)
    a = torch.randn(2, 3, 4, 5, device=device)
    x = torch.randn(6, 4, 3, device=device)
    idx = torch.tensor([5, 1, 2], device=device)

    def f(ws, gs, a, x, idx):
        dot, gram, wsq, wabs, wg2 = torch.ops.mtlkernels.filter_stats(ws, gs)
        c = torch.ops.mtlkernels.channel_contrib(a.flatten(2), a.flatten(2) * 2)
        (y,) = torch.ops.mtlkernels.gather([x], [idx], [None], [0], [1])
        return dot.square().sum(1) + wsq, c, y * 2

    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    for got, want in zip(compiled(ws, gs, a, x, idx), f(ws, gs, a, x, idx)):
        torch.testing.assert_close(got, want)


def test_backend_auto_prefers_compiled():
    from mtlkernels import _backend

    assert _backend.resolve("auto", torch.device("cpu")) == "cpu"
    assert "reference" in _backend.available_backends("cpu")


@pytest.mark.parametrize("backend", ["reference"] + [b for d, b in BACKENDS if d == "cpu"])
def test_outputs_never_require_grad(backend):
    """Weights and BN buffers that require grad must not make the statistics or the compacted
    copies part of an autograd graph (the driver assigns them as new Parameters/buffers)."""
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    g = torch.randn(2, 4, 3, 3, 3)
    assert not any(t.requires_grad for t in ops.filter_stats(w, g, backend=backend).tensors())
    a = torch.randn(2, 4, 5, requires_grad=True)
    assert not ops.channel_contrib(a, torch.randn(2, 4, 5), backend=backend).requires_grad
    bn_mean = torch.randn(4)
    outs = ops.gather_many([w, bn_mean], torch.tensor([2, 0]), None, backend=backend)
    assert not any(o.requires_grad for o in outs)


def test_cuda_kernel_image_op_answers():
    """The runtime question behind the cuda backend's availability exists in every build (a CPU
    build answers why it cannot)."""
    why = torch.ops.mtlkernels._cuda_kernel_image_error(0)
    assert isinstance(why, str)
    from mtlkernels import _backend

    if not _backend.compiled_with_cuda():
        assert "without CUDA" in why


def test_cuda_backend_unavailable_without_a_kernel_image(monkeypatch):
    """A GPU outside the build's targets (SASS sm_80/sm_90, PTX compute_90) would fail every launch
    with "no kernel image": the cuda backend must not be listed there, and auto must skip it."""
    from mtlkernels import _backend

    asked = []

    def image_error(index):
        asked.append(index)
        return "" if index == 0 else "no kernel image is available for execution on the device"

    monkeypatch.setattr(_backend, "compiled_with_cuda", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
    monkeypatch.setattr(torch.ops.mtlkernels, "_cuda_kernel_image_error", image_error)
    _backend._cuda_image_error.cache_clear()
    try:
        why = _backend.unavailable_reason("cuda", torch.device("cuda", 1))
        assert "no kernel image" in why and "cuda:1" in why and "7.5" in why, why
        assert "cuda" not in _backend.available_backends("cuda:1")
        assert _backend.resolve("auto", torch.device("cuda", 1)) != "cuda"
        with pytest.raises(RuntimeError, match="no kernel image"):
            _backend.resolve("cuda", torch.device("cuda", 1))
        assert _backend.unavailable_reason("cuda", torch.device("cuda", 0)) is None
        _backend.unavailable_reason("cuda", torch.device("cuda", 1))
        assert asked == [1, 0], asked  # once per device: cached
    finally:
        _backend._cuda_image_error.cache_clear()


# ------------------------------------------------------------------------------ shared tables
def test_filter_stats_table_row_map():
    """The one filter_stats table format (common.h), as the Triton kernel gets it: offsets, K,
    addresses, then the int32 row -> layer map (odd F: the pad word is zero, not garbage)."""
    ws = [torch.randn(3, 4), torch.randn(2, 2, 3), torch.randn(4)]
    gs = [torch.randn(2, *w.shape) for w in ws]
    tab = torch.ops.mtlkernels._filter_stats_table(ws, gs, True)
    L, T, F = 3, 2, 9
    assert tab.tolist()[:L + 1] == [0, 3, 5, 9] and tab.tolist()[L + 1:2 * L + 1] == [4, 6, 1]
    assert tab[2 * L + 1:3 * L + 1].tolist() == [w.data_ptr() for w in ws]
    step = [g.stride(0) * g.element_size() for g in gs]
    assert tab[3 * L + 1:3 * L + 1 + L * T].tolist() == [
        g.data_ptr() + t * s for g, s in zip(gs, step) for t in range(T)]
    row_map = tab[L * (3 + T) + 1:].view(torch.int32)
    assert row_map.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 0]
    assert torch.ops.mtlkernels._filter_stats_table(ws, gs, False).numel() == L * (3 + T) + 1
    with pytest.raises(RuntimeError, match=r"grads\[1\] must be a \[T=2, ...\] stack"):
        torch.ops.mtlkernels._filter_stats_table(ws, [gs[0], gs[0], gs[2]], True)


def test_gather_table_records_blocks_and_dividers():
    """The one gather table format (common.h): records with host-made dividers, the block map for
    the caller's block size, a zero error word; the outputs are allocated in the output shape."""
    words, div = torch.ops.mtlkernels._table_layout()
    x, y = torch.randn(5, 4, 3), torch.arange(10, dtype=torch.int16)
    i1, i2 = torch.tensor([4, 0]), torch.tensor([1, 2, 3])
    tab, outs = torch.ops.mtlkernels._gather_table([x, y], [i1, None], [i2, i2], [0, 0], [1, 0], 16)
    assert [list(o.shape) for o in outs] == [[2, 3, 3], [3]] and outs[1].dtype == torch.int16
    rec = tab[:words].tolist()
    assert rec[:7] == [1, 5, 1, 4, 3, 2, 3] and rec[7:9] == [i1.data_ptr(), i2.data_ptr()]
    for w, d in zip(rec[div:div + 4], (3, 3, 1, 2)):   # dividers of C, n2, B, n1
        m, s = w & 0xFFFFFFFF, w >> 32
        assert all(((((n * m) >> 32) + n) >> s) == n // d for n in range(1000))
    starts = tab[2 * words:2 * words + 3].tolist()
    assert starts == [0, 2, 3] and tab[-1].item() == 0     # 18 and 3 outputs in blocks of 16
    with pytest.raises(RuntimeError, match=r"idx2\[1\]\[0\] = 99 is out of range"):
        torch.ops.mtlkernels._gather_table([x, y], [i1, None], [i2, torch.tensor([99])], [0, 0], [1, 0], 16)
