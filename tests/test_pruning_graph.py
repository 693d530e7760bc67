"""The fx channel-dependency analysis: coupling, concatenation, flatten, depthwise, exclusion,
unsupported ops (reported, left unpruned), transposed convs; schedule and fine-tuning loop."""
from __future__ import annotations

import copy
import os
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _models_for_pruning import MODELS, TASKS, make_data, outputs_dict, task_losses  # noqa: E402

from mtlkernels.pruning import (MultiTaskPruner, PruningSchedule, analyse,  # noqa: E402
                                count_params_flops, fine_tune, total_params_flops)

warnings.filterwarnings("ignore", category=RuntimeWarning)
pytestmark = pytest.mark.usefixtures("one_thread")
X = torch.randn(2, 3, 16, 16)


def groups(an, name):
    return an.layers[name].out_groups


def test_resnet_residual_coupling():
    an = analyse(MODELS["resnet"](), X)
    # stem + first BasicBlock (identity shortcut) are one set of groups
    assert torch.equal(groups(an, "stem.0"), groups(an, "layer1.0.conv2"))
    assert torch.equal(groups(an, "stem.0"), groups(an, "layer1.0.bn2"))
    # downsample branch coupled with the block's last conv
    assert torch.equal(groups(an, "layer1.1.downsample.0"), groups(an, "layer1.1.conv2"))
    # Bottleneck with downsample, then without (identity): conv3 of both + downsample
    g = groups(an, "layer2.0.conv3")
    assert torch.equal(g, groups(an, "layer2.0.downsample.0")) and torch.equal(g, groups(an, "layer2.1.conv3"))
    # the backbone's last layer feeds every head: their inputs carry its groups
    for t in TASKS:
        assert torch.equal(an.layers[f"heads.{t}.0.0"].in_groups, g)
        assert (groups(an, f"heads.{t}.1") == -1).all()  # output layers: never pruned
    # inner convs are free groups
    assert not set(groups(an, "layer2.0.conv1").tolist()) & set(g.tolist())
    assert len(an.group_members[int(g[0])]) == 6  # conv3, bn3, downsample conv + bn, conv3, bn3


def test_concat_and_flatten_mapping():
    an = analyse(MODELS["aspp"](), X)
    parts = [groups(an, f"heads.seg.{n}") for n in ("b0.0", "branches.0.0", "branches.1.0", "branches.2.0", "pool.1")]
    assert torch.equal(an.layers["heads.seg.project.0"].in_groups, torch.cat(parts))
    an = analyse(MODELS["vgg"](), X)
    # flatten of [N, 8, 4, 4] -> linear: channel c owns input features 16c .. 16c+15
    assert torch.equal(an.layers["norm_fc1"].in_groups, groups(an, "norm_conv").repeat_interleave(16))
    assert (groups(an, "norm_fc2") == -1).all()


def test_depthwise_ties_in_and_out():
    an = analyse(MODELS["depthwise"](), X)
    assert an.layers["dw.0"].kind == "dwconv"
    assert torch.equal(groups(an, "dw.0"), groups(an, "stem.0"))
    assert torch.equal(groups(an, "blocks.1.conv.3"), groups(an, "blocks.1.conv.0"))
    # inverted residual: the projection convs of both blocks and the heads' depthwise convs
    g = groups(an, "blocks.0.conv.6")
    assert torch.equal(g, groups(an, "blocks.1.conv.6")) and torch.equal(g, groups(an, "heads.seg.0"))


class Weird(nn.Module):
    """Slices (absolute channel positions: not understood -> left unpruned) among a GroupNorm, a
    grouped conv and a chunk (understood: tests/test_pruning_patterns.py)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.d = nn.Conv2d(8, 6, 3, padding=1)
        self.e = nn.Conv2d(6, 6, 1)
        self.out1 = nn.Conv2d(4, 2, 1)
        self.out2 = nn.Conv2d(3, 2, 1)
        self.out3 = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        a = F.relu(self.a(x))
        y1 = self.out1(self.b(a)[:, :4])               # slicing channels
        c = self.c(self.gn(a))                           # GroupNorm couples channels in groups
        y2 = self.out2(torch.chunk(self.g(c), 2, dim=1)[0][:, :3])
        y3 = self.out3(self.e(F.relu(self.d(a))))
        return {"seg": y1, "depth": y2, "normal": y3}


def test_unsupported_reported_and_left_unpruned():
    m = Weird()
    with pytest.warns(UserWarning, match="left unpruned"):
        pr = MultiTaskPruner(m, TASKS, "l2", example_inputs=X, min_channels=1)
    assert all("getitem" in u for u in pr.unsupported) and len(pr.unsupported) == 2
    an = pr.an
    for name in ("b", "g"):  # their outputs are sliced (g's through the chunk's tied halves)
        assert (groups(an, name) == -1).all(), name
    for name in ("a", "gn", "c", "d", "e"):
        assert (groups(an, name) >= 0).all(), name
    ref = copy.deepcopy(m)
    rep = pr.prune(4)
    assert rep.pruned == 4 and not {"b", "g"} & set(rep.pruned_channels)
    y = m(X)
    assert {k: v.shape for k, v in y.items()} == {k: v.shape for k, v in ref(X).items()}


def test_exclude_keeps_outputs_but_follows_inputs():
    m = MODELS["vgg"]()
    pr = MultiTaskPruner(m, TASKS, "l2", example_inputs=X, exclude=["backbone.4.0", "heads.seg.0"], min_channels=1)
    an = pr.an
    assert (groups(an, "backbone.4.0") == -1).all() and (groups(an, "backbone.4.1") == -1).all()
    assert (groups(an, "heads.seg.0") == -1).all()
    assert (an.layers["backbone.4.0"].in_groups >= 0).all()
    pr.prune(50)  # deep enough to reach the producers of backbone.4.0's input
    assert m.backbone[4][0].out_channels == 16 and m.heads["seg"][0].out_channels == 8
    assert m.backbone[4][0].in_channels < 16


class Decoder(nn.Module):
    """ConvTranspose (weight [C_in, C_out, k, k]) and linear heads on pooled features; list output."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.up = nn.ConvTranspose2d(8, 6, 2, 2)
        self.bn = nn.BatchNorm2d(6)
        self.seg = nn.Conv2d(6, 2, 1)
        self.fc = nn.Linear(8, 5)
        self.cls = nn.Linear(5, 3)

    def forward(self, x):
        f = self.enc(x)
        s = self.seg(F.relu(self.bn(self.up(f))))
        v = f.mean((2, 3))
        return [s, self.cls(F.relu(self.fc(v))), self.cls(self.fc(v)).sum(1, keepdim=True)]


def test_conv_transpose_and_list_outputs_compact_equals_mask():
    torch.manual_seed(0)
    m = Decoder()
    mm = copy.deepcopy(m)
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="sum"):  # sum over channels: not understood (output only)
        pc = MultiTaskPruner(m, TASKS, "l1", example_inputs=x, min_channels=1)
        pm = MultiTaskPruner(mm, TASKS, "l1", example_inputs=x, min_channels=1, mode="mask")
    assert pc.an.layers["up"].kind == "convT" and (groups(pc.an, "up") >= 0).all()
    assert pc.unsupported == ["sum_1 (sum)"] and (groups(pc.an, "fc") >= 0).all()
    rc, rm = pc.prune(6), pm.prune(6)
    assert rc.original_channels == rm.original_channels
    assert m.up.weight.shape[1] == m.up.out_channels and m.up.in_channels == m.enc[0].out_channels
    m.eval(), mm.eval()
    for a, b in zip(m(x), mm(x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_count_params_flops_per_task():
    m = MODELS["resnet"]()
    c = count_params_flops(m, X)
    backbone = sum(p.numel() for n, p in m.named_parameters() if not n.startswith("heads"))
    for t in TASKS:
        head = sum(p.numel() for p in m.heads[t].parameters())
        assert c[t]["params"] == backbone + head
        assert c[t]["flops"] > 0
    tot = total_params_flops(m, X)
    assert tot["params"] == sum(p.numel() for p in m.parameters())
    assert max(v["flops"] for v in c.values()) < tot["flops"]
    # per task path = whole model minus the other tasks' heads (FLOPs of each head counted alone)
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        m.eval()
        f = m.layer2(m.layer1(m.stem(X)))
        head = {}
        for t in TASKS:
            with FlopCounterMode(display=False) as fc:
                m.heads[t](f)
            head[t] = fc.get_total_flops()
    for t in TASKS:
        assert c[t]["flops"] == tot["flops"] - sum(head[u] for u in TASKS if u != t)
    # tuple outputs named by `tasks`
    c2 = count_params_flops(MODELS["aspp"](), X, tasks=TASKS)
    assert set(c2) == set(TASKS)


@pytest.mark.parametrize("kind", ["channels", "flops", "params"])
def test_schedule_with_fine_tune(kind):
    data = make_data("vgg", n_batches=3)
    torch.manual_seed(0)
    m = MODELS["vgg"]()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    pr = MultiTaskPruner(m, TASKS, "cosine", example_inputs=data[0][0], optimizer=opt, min_channels=2)
    start_ch = pr.num_channels()
    start_fl = total_params_flops(m, data[0][0])["flops"]
    if kind == "channels":
        sched = PruningSchedule(every=2, amount=6, target_channels=start_ch - 15)
    elif kind == "flops":
        sched = PruningSchedule(every=2, amount=6, target_flops=0.8)
    else:
        start_pa = total_params_flops(m, data[0][0])["params"]
        sched = PruningSchedule(every=2, amount=6, target_params=start_pa - 2000)
    hist = fine_tune(m, data, task_losses, opt, steps=12, pruner=pr, schedule=sched)
    assert len(hist) == 12 and all(torch.isfinite(torch.tensor(hist)))
    assert sched.done
    if kind == "channels":
        assert pr.num_channels() <= start_ch - 15
        assert pr.history[-1]["requested"] <= 6
    elif kind == "flops":
        assert total_params_flops(m, data[0][0])["flops"] <= 0.8 * start_fl
    else:
        assert total_params_flops(m, data[0][0])["params"] <= start_pa - 2000
    assert len(pr.history) >= 2


def test_mtlkernels_models_vgg16_and_resnet():
    models = pytest.importorskip("mtlkernels.study.models")
    x = torch.randn(1, 3, 32, 32)
    for ctor in (lambda: models.VGG16MTL(width=0.125, head_channels=8, pools=3),
                 lambda: models.ResNetMTL(depth=18, width=0.125, head_channels=8)):
        torch.manual_seed(0)
        m = ctor()
        mm = copy.deepcopy(m)
        tasks = m.task_names
        ex = m.head_output_layers()
        g = torch.Generator().manual_seed(0)
        xs = torch.randn(2, 3, 32, 32, generator=g)
        pc = MultiTaskPruner(m, tasks, "cosine", example_inputs=x, exclude=ex, min_channels=2)
        pm = MultiTaskPruner(mm, tasks, "cosine", example_inputs=x, exclude=ex, min_channels=2, mode="mask")
        assert not pc.unsupported
        for model, pr in ((m, pc), (mm, pm)):
            out = model(xs)
            pr.accumulate({t: out[t].square().mean() * (i + 1) for i, t in enumerate(tasks)})
        rc, rm = pc.prune(12), pm.prune(12)
        assert rc.pruned == 12 and rc.original_channels == rm.original_channels
        m.eval(), mm.eval()
        with torch.no_grad():
            a, b = m(xs), mm(xs)
        for t in tasks:
            torch.testing.assert_close(a[t], b[t], rtol=1e-4, atol=1e-5)


class Nothing(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return {"seg": self.c(x), "depth": self.c(x) * 2, "normal": self.c(x) + 1}


def test_nothing_prunable():
    m = Nothing()
    x = torch.randn(1, 3, 4, 4)
    pr = MultiTaskPruner(m, TASKS, "taylor", example_inputs=x)
    assert pr.prunable_channels() == 0 and pr.num_channels() == 2
    pr.accumulate({k: v.sum() for k, v in m(x).items()})
    with pytest.warns(UserWarning, match="only 0"):
        assert pr.prune(3).pruned == 0


def test_unknown_names_refused():
    with pytest.raises(ValueError, match="does not have"):
        MultiTaskPruner(Nothing(), TASKS, "l1", example_inputs=torch.randn(1, 3, 4, 4), exclude=["nope"])
    with pytest.raises(ValueError, match="does not have"):
        MultiTaskPruner(Nothing(), TASKS, "l1", example_inputs=torch.randn(1, 3, 4, 4), min_channels={"x.y": 2})
    with pytest.raises(ValueError, match="criterion"):
        MultiTaskPruner(Nothing(), TASKS, "nope", example_inputs=torch.randn(1, 3, 4, 4))
