"""Faults in the raw ops (``torch.ops.mtlkernels.*`` and ``*_triton``): a wrong call raises, never
crashes the process or returns garbage (issue 13).

The calls that could crash (out-of-range or int32 indices, undersized gradients) run in a child
pytest process (``test_raw_ops_in_subprocess``), so a segfault is reported as this test's failure, with the
case that was running, instead of killing the test run. The child runs the explicit cases of the
issue's probe and a hypothesis property test: random, partly invalid calls of every raw op on every
backend that runs here; a valid call must agree with the float64 reference, an invalid one must
raise (or agree, where the reference defines it).
"""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from mtlkernels import _backend, ops, reference

CHILD = os.environ.get("MTL_RAW_FAULTS_CHILD") == "1"
child_only = pytest.mark.skipif(not CHILD, reason="runs in the child process of test_raw_ops_in_subprocess")

# raw ops per backend that runs on CPU tensors here
RAW = {}
if _backend.unavailable_reason("cpu", torch.device("cpu")) is None:
    RAW["cpu"] = {"filter_stats": torch.ops.mtlkernels.filter_stats,
                  "channel_contrib": torch.ops.mtlkernels.channel_contrib,
                  "gather": torch.ops.mtlkernels.gather}
if _backend.unavailable_reason("triton", torch.device("cpu")) is None:
    from mtlkernels import triton_ops  # noqa: F401  (registers the *_triton ops)

    RAW["triton"] = {"filter_stats": torch.ops.mtlkernels.filter_stats_triton,
                     "channel_contrib": torch.ops.mtlkernels.channel_contrib_triton,
                     "gather": torch.ops.mtlkernels.gather_triton}
BACKENDS = sorted(RAW)


def test_raw_ops_in_subprocess():
    """Runs this module's inner tests in a subprocess; a crash there fails here, naming the case."""
    if CHILD:
        pytest.skip("this is the child")
    if not BACKENDS:
        pytest.skip("no compiled or Triton backend here")
    env = dict(os.environ, MTL_RAW_FAULTS_CHILD="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-k", "inner_", __file__]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cases = [ln for ln in res.stderr.splitlines() if ln.startswith("CASE ")]
    assert res.returncode == 0, (
        f"child exited with {res.returncode}; last case started: {cases[-1] if cases else None}\n"
        f"{res.stdout[-3000:]}\n{res.stderr[-2000:]}")
    assert len(cases) > 20, res.stdout[-2000:]


def _start(desc: str) -> None:
    print("CASE", desc, file=sys.stderr, flush=True)  # the last one names a crash


# ------------------------------------------------------------------ the probe, explicitly
def _x():
    return torch.randn(5, 4)


EXPLICIT = [  # (op, args, the argument the error must name)
    ("gather", lambda: ([_x()], [torch.tensor([0, 2], dtype=torch.int32)], [None], [0], [1]), r"idx1\[0\]"),
    ("gather", lambda: ([_x()], [torch.tensor([5])], [None], [0], [1]), r"idx1\[0\]"),
    ("gather", lambda: ([_x()], [torch.tensor([-1])], [None], [0], [1]), r"idx1\[0\]"),
    ("gather", lambda: ([_x()], [torch.tensor([1 << 40])], [None], [0], [1]), r"idx1\[0\]"),
    ("gather", lambda: ([_x(), _x()], [None, None], [None, torch.tensor([0, 4])], [0, 0], [1, 1]), r"idx2\[1\]"),
    ("filter_stats", lambda: ([torch.randn(6, 5)], [torch.randn(4, 5)]), r"grads\[0\]"),
    ("filter_stats", lambda: ([torch.randn(6, 5)], [torch.randn(6, 5).half()]), r"grads\[0\]"),
    ("filter_stats", lambda: ([torch.randn(5, 6).t()], [torch.randn(6, 5)]), r"weights\[0\]"),
    ("filter_stats", lambda: ([torch.randn(6, 5)], [torch.randn(5, 6).t()]), r"grads\[0\]"),
    ("filter_stats", lambda: ([torch.randn(6, 5), torch.randn(2, 3)], [torch.randn(2, 6, 5), torch.randn(3, 2, 3)]),
     r"grads\[1\]"),
    ("channel_contrib", lambda: (torch.randn(2, 3, 4), torch.randn(2, 3, 5)), "grad"),
]


@child_only
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(EXPLICIT)))
def test_inner_explicit(backend, case):
    op, make, names = EXPLICIT[case]
    _start(f"explicit {backend} {op} #{case}")
    with pytest.raises(RuntimeError, match=names):
        RAW[backend][op](*make())


@child_only
@pytest.mark.parametrize("backend", BACKENDS)
def test_inner_public_gather_unchecked(backend):
    """check_indices=False skips only the Python check: the op still refuses a bad index."""
    for bad in (5, -3, 1 << 40):  # x has 5 rows
        _start(f"public gather check_indices=False {backend} {bad}")
        with pytest.raises(RuntimeError, match="out of range"):
            ops.gather_channels(_x(), torch.tensor([0, bad]), backend=backend, check_indices=False)


# ------------------------------------------------------------------ property test
KINDS = (torch.float32, torch.float16, torch.bfloat16)


def _rand(gen, shape, dtype):
    return torch.randn(shape, generator=gen).to(dtype)


def _close(got, want):
    """float32 outputs against the float64 reference, to the accumulation error."""
    assert got.dtype == torch.float32 and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    scale = max(float(want.abs().max()), 1e-30) if want.numel() else 1.0
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * scale)


def _fault(data, faults):
    """"none" (a valid call) about half the time, else one of the faults."""
    return data.draw(st.one_of(st.just("none"), st.sampled_from(faults)))


def _filter_stats_case(data, gen):
    dtype = data.draw(st.sampled_from(KINDS))
    shapes = data.draw(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 9)), min_size=1, max_size=3))
    t = data.draw(st.integers(1, 4))
    ws = [_rand(gen, s, dtype) for s in shapes]
    gs = [_rand(gen, s, dtype) for s in shapes for _ in range(t)]
    if data.draw(st.booleans()):  # the stacked form: one [T, F, ...] tensor per layer
        gs = [torch.stack(gs[l * t:(l + 1) * t]) for l in range(len(ws))]
    fault = _fault(data, ["grad_shape", "grad_dtype", "noncontig", "count",
                          "meta", "empty", "float64", "too_many_tasks", "grad_strides"])
    k = data.draw(st.integers(0, len(gs) - 1))
    if fault == "grad_shape":
        gs[k] = gs[k][:-1] if gs[k].shape[0] > 1 else gs[k][:, :-1]
    elif fault == "grad_dtype":
        gs[k] = gs[k].to(torch.float32 if dtype != torch.float32 else torch.float16)
    elif fault == "noncontig":
        ws[0] = _rand(gen, ws[0].shape[::-1], dtype).t()
    elif fault == "count":
        gs = gs + gs[:1]
    elif fault == "meta":
        gs[k] = gs[k].to("meta")
    elif fault == "empty":
        ws[0], gs[0] = ws[0][:0], gs[0][:0]
    elif fault == "float64":
        ws = [w.double() for w in ws]
        gs = [g.double() for g in gs]
    elif fault == "too_many_tasks":
        gs = [g for g in gs for _ in range(17)]
    elif fault == "grad_strides":  # same values, another element order than its weight
        gs[k] = gs[k].transpose(-1, -2).contiguous().transpose(-1, -2)
    return (ws, gs), fault == "none", (lambda: reference.filter_stats(
        [w.double() for w in ws], [g.double() for g in gs]))


def _channel_contrib_case(data, gen):
    dtype = data.draw(st.sampled_from(KINDS))
    n, c, s = (data.draw(st.integers(1, 5)) for _ in range(3))
    a, d = _rand(gen, (n, c, s), dtype), _rand(gen, (n, c, s), dtype)
    layout = data.draw(st.sampled_from(["contiguous", "channels_last", "strided"]))
    if layout == "channels_last":
        a, d = (v.transpose(1, 2).contiguous().transpose(1, 2) for v in (a, d))
    elif layout == "strided":
        a, d = (torch.cat([v, v], 2)[:, :, ::2] for v in (a, d))
    fault = _fault(data, ["rank", "shape", "dtype", "meta", "empty", "float64"])
    if fault == "rank":
        a, d = a.unsqueeze(-1), d.unsqueeze(-1)
    elif fault == "shape":
        d = d[:, :, :-1] if s > 1 else d[:, :-1] if c > 1 else d[:0]
    elif fault == "dtype":
        d = d.to(torch.float32 if dtype != torch.float32 else torch.bfloat16)
    elif fault == "meta":
        d = d.to("meta")
    elif fault == "empty":
        a, d = a[:0], d[:0]
    elif fault == "float64":
        a, d = a.double(), d.double()
    return (a, d), fault == "none", lambda: reference.channel_contrib(a.double(), d.double())


def _gather_case(data, gen):
    xs, i1s, i2s, d1s, d2s = [], [], [], [], []
    for _ in range(data.draw(st.integers(1, 3))):
        shape = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
        dtype = data.draw(st.sampled_from([torch.float32, torch.float16, torch.int8, torch.int64]))
        x = (torch.randn(shape, generator=gen) * 50).to(dtype)
        d1, d2 = data.draw(st.permutations(range(len(shape) + 1)))[:2]  # dim len(shape): no index
        idx = [None if d >= x.dim() else
               torch.tensor(data.draw(st.lists(st.integers(0, shape[d] - 1), min_size=1, max_size=6)))
               for d in (d1, d2)]
        xs.append(x)
        i1s.append(idx[0])
        i2s.append(idx[1])
        d1s.append(min(d1, x.dim() - 1))
        d2s.append(min(d2, x.dim() - 1))
    fault = _fault(data, ["out_of_range", "negative", "huge", "int32", "2d", "noncontig", "dim",
                          "same_dim", "meta", "lengths"])
    k = data.draw(st.integers(0, len(xs) - 1))
    i1, x = i1s[k], xs[k]
    if fault in ("out_of_range", "negative", "huge", "int32", "2d", "meta") and i1 is None:
        fault = "none"  # no index to break
    if fault == "out_of_range":
        i1s[k] = torch.cat([i1, torch.tensor([x.shape[d1s[k]]])])
    elif fault == "negative":
        i1s[k] = torch.cat([i1, torch.tensor([-1])])
    elif fault == "huge":
        i1s[k] = torch.cat([i1, torch.tensor([1 << 40])])
    elif fault == "int32":
        i1s[k] = i1.int()
    elif fault == "2d":
        i1s[k] = i1.unsqueeze(0)
    elif fault == "meta":
        i1s[k] = i1.to("meta")
    elif fault == "noncontig" and x.dim() > 1 and x.shape[0] > 1 and x.shape[-1] > 1:
        xs[k] = x.transpose(0, -1)
    elif fault == "dim":
        d1s[k] = x.dim() + 1 if i1 is not None else d1s[k]
        i1s[k] = i1 if i1 is not None else torch.tensor([0])
    elif fault == "same_dim" and x.dim() > 1:
        i1s[k], i2s[k], d2s[k] = torch.tensor([0]), torch.tensor([0]), d1s[k]
    elif fault == "lengths":
        d2s = d2s[:-1]
    return (xs, i1s, i2s, d1s, d2s), fault == "none", lambda: reference.gather(xs, i1s, i2s, d1s, d2s)


CASES = {"filter_stats": _filter_stats_case, "channel_contrib": _channel_contrib_case,
         "gather": _gather_case}


def _agree(op, got, want):
    got = list(got) if isinstance(got, (list, tuple)) else [got]
    want = list(want) if isinstance(want, (list, tuple)) else [want]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if op == "gather":
            assert g.dtype == w.dtype and torch.equal(g, w)
        else:
            _close(g, w)


@child_only
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", sorted(CASES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_inner_property(backend, op, data):
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    args, valid, ref = CASES[op](data, gen)
    _start(f"property {backend} {op} valid={valid} {[getattr(a, 'shape', a) for a in args]}")
    try:
        got = RAW[backend][op](*args)
    except RuntimeError:
        assert not valid, "a valid call raised"
        return
    try:
        want = ref()
    except Exception:  # the reference does not define it either: the op should have raised
        raise AssertionError("an invalid call returned a result")
    _agree(op, got, want)


# ------------------------------------------------------------------ in-process (nothing can crash)
META_MIXES = [  # one meta tensor among CPU tensors: the dispatcher runs the fake kernel
    ("filter_stats", lambda: ([torch.randn(3, 4)], [torch.randn(3, 4, device="meta")]), r"grads\[0\]"),
    ("filter_stats", lambda: ([torch.randn(3, 4), torch.randn(2, 4, device="meta")],
                              [torch.randn(3, 4), torch.randn(2, 4)]), r"weights\[1\]"),
    ("channel_contrib", lambda: (torch.randn(2, 3, 4), torch.randn(2, 3, 4, device="meta")), "grad"),
    ("gather", lambda: ([torch.randn(5, 4)], [torch.tensor([1], device="meta")], [None], [0], [1]),
     r"idx1\[0\]"),
    ("gather", lambda: ([torch.randn(5, 4), torch.randn(5, 4, device="meta")], [None, None],
                        [None, None], [0, 0], [1, 1]), r"xs\[1\]"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(META_MIXES)))
def test_mixed_meta_and_cpu_raises(backend, case):
    op, make, names = META_MIXES[case]
    with pytest.raises(RuntimeError, match=names):
        RAW[backend][op](*make())


def test_all_meta_still_traces():
    """The fake kernels still serve meta-only calls (torch.compile, opcheck)."""
    if "cpu" not in RAW:
        pytest.skip("no compiled extension")
    dot, *_ = RAW["cpu"]["filter_stats"]([torch.empty(3, 4, device="meta")], [torch.empty(3, 4, device="meta")])
    assert dot.device.type == "meta" and dot.shape == (3, 1)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf (interpreter)
@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_channel_contrib_overflow_is_the_same_on_every_backend(backend, layout):
    """Overflow is decided by the exact sum rounded to float32 once: not by a product (which
    float32 would turn into +-inf, then NaN), a partial sum, or FMA contraction (which gave +inf
    on the C++ backend where the sum is -1e60)."""
    a = torch.zeros(1, 5, 40)
    d = torch.zeros(1, 5, 40)
    a[0, 0, :2], d[0, 0, :2] = 1e30, torch.tensor([1e30, -2e30])       # sum -1e60: -inf
    a[0, 1, :2], d[0, 1, :2] = 1e20, torch.tensor([1e20, -1e20])       # products overflow, sum 0
    a[0, 2, :3], d[0, 2, :3] = torch.tensor([3e38, 3e38, -3e38]), 1.0  # partial sums overflow
    a[0, 3, 5], d[0, 3, 5] = float("nan"), 1.0                         # NaN propagates
    a[0, 4, :2], d[0, 4, :2] = torch.tensor([float("inf"), -float("inf")]), 1.0  # inf - inf
    want = torch.tensor([-float("inf"), 0.0, 3e38, float("nan"), float("nan")])
    a4, d4 = a.view(1, 5, 5, 8), d.view(1, 5, 5, 8)
    if layout == "channels_last":
        a4, d4 = a4.to(memory_format=torch.channels_last), d4.to(memory_format=torch.channels_last)
    got = ops.channel_contrib(a4, d4, backend=backend)
    torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)
