"""Prune your own multi-task model inside your own training loop.

The model below is *yours* (not from mtlkernels.study.models): a small shared encoder and three heads.
The only changes to a usual training loop are the four marked lines: build a MultiTaskPruner,
call ``pruner.accumulate(losses)`` instead of ``loss.backward()``, let a PruningSchedule prune
every few steps, save the pruned model. The optimizer keeps working across compactions.

    python python/prune_own_model.py --steps 200 --every 10 --amount 8 --target 0.3
"""
import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mtlkernels.study.data import ProceduralScenes
from mtlkernels.study.metrics import task_losses
from mtlkernels.pruning import MultiTaskPruner, PruningSchedule, count_params_flops, load_pruned, save_pruned


class MyMultiTaskNet(nn.Module):
    """A user's model: conv encoder shared by segmentation, depth and normals heads."""

    def __init__(self, classes: int = 7, width: int = 32):
        super().__init__()
        w = width

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.encoder = nn.Sequential(block(3, w, 1), block(w, w, 2), block(w, 2 * w, 1), block(2 * w, 2 * w, 2),
                                     block(2 * w, 4 * w, 1))
        self.seg = nn.Sequential(block(4 * w, w, 1), nn.Conv2d(w, classes, 1))
        self.depth = nn.Sequential(block(4 * w, w, 1), nn.Conv2d(w, 1, 1))
        self.normal = nn.Sequential(block(4 * w, w, 1), nn.Conv2d(w, 3, 1))

    def forward(self, x):
        f = self.encoder(x)
        size = (x.shape[-2], x.shape[-1])
        up = lambda y: F.interpolate(y, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        return {"seg": up(self.seg(f)), "depth": up(self.depth(f)), "normal": up(self.normal(f))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=10, help="prune every N steps")
    ap.add_argument("--amount", type=int, default=8, help="filters per prune event")
    ap.add_argument("--target", type=float, default=0.3, help="keep this fraction of the prunable filters")
    ap.add_argument("--criterion", default="cosine")
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=None, help="where to save the pruned model [a temp dir]")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    data = ProceduralScenes("train", args.n_train, args.size, seed=0, cache_dir=False)
    model = MyMultiTaskNet(classes=data.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    example = data.get(slice(0, 1))["image"]
    before = count_params_flops(model, example)

    # (1) the pruner: heads' output layers keep their task's channels (they are excluded automatically too)
    pruner = MultiTaskPruner(model, ["seg", "depth", "normal"], args.criterion, example_inputs=example,
                             optimizer=opt, exclude=["seg.1", "depth.1", "normal.1"], min_channels=4)
    start = pruner.num_channels()
    sched = PruningSchedule(every=args.every, amount=args.amount,
                            target_channels=int(start - (1 - args.target) * pruner.prunable_channels()))
    g = torch.Generator().manual_seed(0)
    for step in range(args.steps):
        idx = torch.randint(0, len(data), (args.batch_size,), generator=g)
        batch = data.get(idx)
        losses = task_losses(model(batch["image"]), batch)
        opt.zero_grad()
        pruner.accumulate(losses)          # (2) instead of sum(losses.values()).backward()
        opt.step()
        report = sched.step(pruner)        # (3) prunes + compacts model and optimizer every `every` steps
        if report is not None:
            print(f"step {step + 1}: pruned {report.pruned} filters -> {pruner.num_channels()} channels, "
                  f"loss {sum(v.item() for v in losses.values()):.3f}")
    after = count_params_flops(model, example)
    for t in before:
        print(f"{t}: params {before[t]['params']:,} -> {after[t]['params']:,}, "
              f"FLOPs {before[t]['flops']:,} -> {after[t]['flops']:,}")
    out = Path(args.out or tempfile.mkdtemp())
    save_pruned(model, out / "pruned.pt")  # (4) state dict + architecture
    again = load_pruned(lambda: MyMultiTaskNet(classes=data.num_classes), out / "pruned.pt").eval()
    model.eval()
    with torch.no_grad():
        same = all(torch.allclose(model(example)[t], again(example)[t], atol=1e-5) for t in before)
    print(f"saved {out / 'pruned.pt'}; reloaded model gives the same outputs: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
