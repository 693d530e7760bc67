"""CPU benchmark of the multi-layer filter statistics (pytest-benchmark).

Providers, measured in one run: the machine's read bandwidth (a torch.sum over as many bytes as the
op reads: the ceiling), the straightforward PyTorch version (per-pair cosine loops), the readable
reference (einsum), a well-vectorised PyTorch version (bmm per layer), and the C++ kernel. Run: ``python -m pytest bench/test_filter_stats_bench.py --benchmark-only``.
"""
import pytest
import torch

from mtlkernels import ops
from baselines import reference_impl, straightforward, vectorised
from shapes import NETWORKS, numel

CASES = [("vgg16", 3), ("vgg16", 8), ("resnet50", 3), ("resnet50", 8)]


def make(net, T, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = NETWORKS[net]()
    ws = [torch.randn(*s, generator=gen) for s in shapes]
    gs = [torch.randn(T, *s, generator=gen) for s in shapes]
    return ws, gs


@pytest.mark.parametrize("net,T", CASES)
@pytest.mark.parametrize("provider", ["bandwidth", "straightforward", "reference", "vectorised", "cpu"])
def test_filter_stats(benchmark, net, T, provider):
    if provider in ("straightforward", "reference") and T == 8:
        pytest.skip("slow (seconds per round); T=3 shows the gap")
    ws, gs = make(net, T)
    flat_g = [g for G in gs for g in G.unbind(0)]
    nbytes = (T + 1) * numel(NETWORKS[net]()) * 4
    benchmark.group = f"filter_stats {net} T={T} float32"
    benchmark.extra_info.update(bytes_read=nbytes, weights=numel(NETWORKS[net]()), T=T)
    if provider == "bandwidth":
        buf = torch.randn(nbytes // 4)
        fn = lambda: buf.sum()  # noqa: E731
    elif provider == "straightforward":
        fn = lambda: straightforward(ws, flat_g)  # noqa: E731
    elif provider == "vectorised":
        fn = lambda: vectorised(ws, flat_g)  # noqa: E731
    elif provider == "reference":
        fn = lambda: reference_impl(ws, flat_g)  # noqa: E731
    else:
        fn = lambda: ops.filter_stats_many(ws, gs, backend="cpu")  # noqa: E731
    benchmark.pedantic(fn, rounds=5 if provider != "straightforward" else 2, warmup_rounds=1)
