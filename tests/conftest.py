"""Shared test setup: Triton runs under its interpreter on CPU-only machines, a poisoning fixture
for outputs, and the device x backend matrix of the compiled kernels."""
import os

import torch

if not torch.cuda.is_available():  # must precede the first import of triton kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import mtlkernels  # noqa: E402,F401
from mtlkernels import _backend  # noqa: E402


@pytest.fixture
def one_thread():
    """Tiny models run fastest (and do not oversubscribe a shared machine) on one intra-op thread;
    the previous setting is restored afterwards. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def poison():
    """Every torch.empty inside the test is filled with NaN (ints: their max), so an output element
    a kernel forgets to write fails the comparison."""
    import torch.utils.deterministic as det

    old_det, old_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    old_fill = det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        yield
    finally:
        det.fill_uninitialized_memory = old_fill
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def compiled_backends():
    """(device, backend) pairs of compiled kernels that can run on this machine."""
    pairs = []
    if _backend.unavailable_reason("cpu", torch.device("cpu")) is None:
        pairs.append(("cpu", "cpu"))
    if torch.cuda.is_available():
        for b in ("cuda", "triton"):
            if _backend.unavailable_reason(b, torch.device("cuda")) is None:
                pairs.append(("cuda", b))
    return pairs


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
