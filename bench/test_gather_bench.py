"""CPU benchmark of the many-tensor channel gather: one compaction step of VGG16 (every conv's
output channels and the next conv's input channels, half of them kept), reference
(``index_select`` chains, one tensor at a time) vs the C++ kernel (one call)."""
import pytest
import torch

from mtlkernels import ops
from shapes import vgg16


def compaction_step(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = vgg16()
    ws = [torch.randn(*s, generator=gen) for s in shapes]
    keep = [torch.randperm(s[0], generator=gen)[: s[0] // 2].sort().values for s in shapes]
    out_idx = keep
    in_idx = [None] + keep[:-1]
    return ws, out_idx, in_idx


@pytest.mark.parametrize("provider", ["reference", "cpu"])
def test_gather_vgg16(benchmark, provider):
    ws, o, i = compaction_step()
    benchmark.group = "gather vgg16 (13 convs, half the channels kept)"
    benchmark.extra_info["bytes_moved"] = 2 * sum(w.numel() for w in ws) // 4 * 4
    benchmark.pedantic(lambda: ops.gather_many(ws, o, i, backend=provider, check_indices=False),
                       rounds=10, warmup_rounds=2)
