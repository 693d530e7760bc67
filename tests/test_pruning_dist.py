"""Two processes on the gloo backend (CPU), the model wrapped in DistributedDataParallel: every
rank sees different data, the accumulated scores are all-reduced before ranking, so all ranks prune
the same channels; DDP is re-wrapped after the compaction and training continues with equal
replicas."""
from __future__ import annotations

import os
import sys
import tempfile
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(__file__))

WORLD = 2


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _models_for_pruning import MODELS, TASKS, make_data, task_losses

    from mtlkernels.pruning import MultiTaskPruner

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {}
        for name in MODELS:
            data = make_data(name, n_batches=2, seed=10 + rank)  # different data on every rank
            torch.manual_seed(0)
            m = MODELS[name]()
            opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
            crit = "cosine" if name != "aspp" else "taylor"
            pr = MultiTaskPruner(m, TASKS, crit, example_inputs=data[0][0], optimizer=opt, min_channels=2)
            ddp = DDP(m)
            for x, y in data:
                opt.zero_grad()
                # accumulate averages the gradients across ranks itself (sync_grads="auto"):
                # its autograd.grad calls bypass DDP's reducer
                pr.accumulate(task_losses(ddp(x), y))
                opt.step()
            local = pr._acc.value()
            reduced = pr.scores()
            locals_ = [torch.zeros_like(local) for _ in range(WORLD)]
            dist.all_gather(locals_, local)
            rep = pr.prune(6)
            ddp = DDP(m)  # re-wrap after a compaction (new parameters)
            x, y = data[0]
            opt.zero_grad()
            pr.accumulate(task_losses(ddp(x), y))
            opt.step()
            results[name] = {
                "local_differs": not torch.allclose(locals_[0], locals_[1]),
                "reduced_is_mean": torch.allclose(reduced, sum(locals_) / WORLD),
                "history": pr.history,
                "params": [p.detach().clone() for p in m.parameters()],
                "pruned": rep.pruned,
            }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_process_gloo_agreement():
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_worker, args=(init_file, tmp), nprocs=WORLD, join=True)
        r0 = torch.load(os.path.join(tmp, "rank0.pt"), weights_only=False)
        r1 = torch.load(os.path.join(tmp, "rank1.pt"), weights_only=False)
    assert set(r0) == {"vgg", "resnet", "aspp", "depthwise"}
    for name in r0:
        a, b = r0[name], r1[name]
        assert a["local_differs"], name            # the ranks really saw different data
        assert a["reduced_is_mean"] and b["reduced_is_mean"], name
        assert a["pruned"] == b["pruned"] == 6
        assert a["history"] == b["history"], name  # same decisions on every rank
        assert len(a["params"]) == len(b["params"])
        for p, q in zip(a["params"], b["params"]):
            assert p.shape == q.shape
            torch.testing.assert_close(p, q, rtol=0, atol=0)
