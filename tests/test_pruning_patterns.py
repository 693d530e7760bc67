"""Architecture patterns of real backbones, one minimal model each (torchvision/timm not needed):
each is analysed, pruned in compact and in mask mode, and the two must make the same decisions and
compute the same outputs; what cannot be pruned safely is blocked *before* anything changes.

subclassed norms (timm BatchNormAct2d, ``class MyBN(nn.BatchNorm2d)``), stochastic depth outside
torch.nn, grouped convs (ResNeXt/RegNet), depthwise convs with a channel multiplier, GroupNorm,
``chunk`` on channels, a slice that keeps every channel (GhostNet), shape asserts and size arithmetic, a weight also used functionally,
channels_last, and ``round_to`` with ``ranking="uniform"`` and with convs feeding one concatenation.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlkernels.pruning import MultiTaskPruner, load_pruned, save_pruned

warnings.filterwarnings("ignore", category=RuntimeWarning)
TASKS = ["a", "b"]


pytestmark = pytest.mark.usefixtures("one_thread")


class MyBN(nn.BatchNorm2d):
    pass


class BNAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: a BatchNorm2d subclass outside torch.nn with the activation inside."""

    def __init__(self, c):
        super().__init__(c)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(super().forward(x))


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth: channel-preserving; sizes its noise from the input."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        noise = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype).bernoulli_(1 - self.p)
        return x * noise / (1 - self.p)


def heads(c):
    return nn.ModuleDict({t: nn.Conv2d(c, 2, 1) for t in TASKS})


class Base(nn.Module):
    def out(self, f):
        return {t: h(f) for t, h in self.heads.items()}


class Subclassed(Base):
    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 8, 3, padding=1), MyBN(8)
        self.c2, self.n2 = nn.Conv2d(8, 8, 3, padding=1), BNAct(8)
        self.heads = heads(8)

    def forward(self, x):
        return self.out(self.n2(self.c2(F.relu(self.n1(self.c1(x))))))


class Residual(Base):
    """ResNeXt-style block: 1x1 -> grouped 3x3 -> 1x1, stochastic depth on the residual branch."""

    def __init__(self, groups=2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.g = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1, groups=groups), nn.BatchNorm2d(12), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(12, 8, 1), nn.BatchNorm2d(8))
        self.sd = StochasticDepth(0.2)
        self.heads = heads(8)

    def forward(self, x):
        x = self.stem(x)
        return self.out(F.relu(x + self.sd(self.b(self.g(self.a(x))))))


class Multiplier(Base):
    """A depthwise conv with channel multiplier 2, then GroupNorm (whole norm groups pruned)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.dw = nn.Conv2d(6, 12, 3, padding=1, groups=6)
        self.gn = nn.GroupNorm(4, 12)
        self.pw = nn.Conv2d(12, 8, 1)
        self.heads = heads(8)

    def forward(self, x):
        return self.out(F.relu(self.pw(F.relu(self.gn(self.dw(self.c1(x)))))))


class Chunked(Base):
    """ShuffleNetV2's split without the shuffle: x1, x2 = x.chunk(2, 1); cat(x1, branch(x2))."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6), nn.ReLU())
        self.heads = heads(10)

    def forward(self, x):
        x1, x2 = self.c1(x).chunk(2, dim=1)
        torch._assert(x.shape[-1] % 2 == 0, "even width")        # shape checks block nothing
        f = torch.cat([x1, self.branch(x2)], 1)
        h = x.shape[2] // 2
        f = F.interpolate(F.avg_pool2d(f, 2), size=(h * 2, h * 2))
        return self.out(f)


class Concat(Base):
    """DenseNet-style: three convs feed one concatenation, normalised as a whole."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 12, 3, padding=1) for _ in range(3)])
        self.bn = nn.BatchNorm2d(36)
        self.heads = heads(36)

    def forward(self, x):
        return self.out(F.relu(self.bn(torch.cat([c(x) for c in self.convs], 1))))


class Shared(Base):
    """A conv used as a module and, with its weight, functionally (dilated)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.heads = heads(8)

    def forward(self, x):
        y = F.relu(self.c1(x))
        y = F.relu(self.c2(y)) + F.conv2d(y, self.c2.weight, self.c2.bias, padding=2, dilation=2)
        return self.out(F.relu(self.c3(y)))


class Ghost(Base):
    """GhostNet's module: cat([x1, cheap(x1)])[:, :out] -- a slice that keeps every channel."""

    def __init__(self):
        super().__init__()
        self.primary = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4), nn.ReLU())
        self.out_chs = 8
        self.heads = heads(8)

    def forward(self, x):
        x1 = self.primary(x)
        return self.out(torch.cat([x1, self.cheap(x1)], dim=1)[:, :self.out_chs])


PATTERNS = {"ghost_slice": Ghost, "subclassed": Subclassed, "grouped_residual": Residual, "multiplier_groupnorm": Multiplier,
            "chunk": Chunked, "concat": Concat}


def data(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 3, 8, 8, generator=g), {t: torch.randn(2, 2, 8, 8, generator=g) for t in TASKS})
            for _ in range(n)]


def step(model, pr, opt, x, y):
    opt.zero_grad(set_to_none=True)
    out = model(x)
    pr.accumulate({t: F.mse_loss(out[t], y[t]) for t in TASKS})
    opt.step()


def evaluate(model, x):
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train()
    return out


@pytest.mark.parametrize("name", list(PATTERNS))
def test_pattern_compact_equals_mask(name):
    torch.manual_seed(0)
    m_c = PATTERNS[name]().train()
    m_m = copy.deepcopy(m_c)
    ds = data()
    prs, opts = {}, {}
    for mode, m in (("compact", m_c), ("mask", m_m)):
        opts[mode] = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # nothing reported as not understood
            prs[mode] = MultiTaskPruner(m, TASKS, "taylor", example_inputs=ds[0][0], optimizer=opts[mode],
                                        mode=mode, min_channels=1)
    assert prs["compact"].unsupported == []
    total = prs["compact"].prunable_channels()
    assert total > 0
    for x, y in ds[:2]:
        step(m_c, prs["compact"], opts["compact"], x, y)
        step(m_m, prs["mask"], opts["mask"], x, y)
    n = max(1, total // 3)
    r_c, r_m = prs["compact"].prune(n), prs["mask"].prune(n)
    assert r_c.pruned == r_m.pruned == n
    assert r_c.original_channels == r_m.original_channels
    x, y = ds[2]
    step(m_c, prs["compact"], opts["compact"], x, y)   # still trains after compaction
    step(m_m, prs["mask"], opts["mask"], x, y)
    a, b = evaluate(m_c, x), evaluate(m_m, x)
    for t in TASKS:
        torch.testing.assert_close(a[t], b[t], rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in m_c.parameters()) < sum(p.numel() for p in m_m.parameters())
    # re-analysis of the compacted model agrees with the pruned state
    assert prs["compact"].prunable_channels() == total - n or name == "multiplier_groupnorm"


def test_grouped_conv_keeps_groups_equal():
    torch.manual_seed(0)
    m = Residual(groups=2)
    pr = MultiTaskPruner(m, TASKS, "l1", example_inputs=data(1)[0][0], min_channels=1)
    info = pr.an.layers["g.0"]
    # output position j of both conv groups is one channel group; input position j too
    og = info.out_groups
    assert torch.equal(og[:6], og[6:]) and info.in_groups.numel() == 4
    pr.prune(5)
    conv = m.g[0]
    assert conv.groups == 2 and conv.out_channels % 2 == 0 and conv.in_channels % 2 == 0
    assert conv.weight.shape[1] * 2 == conv.in_channels == m.a[0].out_channels
    evaluate(m, data(1)[0][0])


def test_groupnorm_prunes_whole_norm_groups():
    torch.manual_seed(0)
    m = Multiplier()
    pr = MultiTaskPruner(m, TASKS, "l1", example_inputs=data(1)[0][0], min_channels=1)
    with pytest.warns(UserWarning):
        pr.prune(100)
    assert m.gn.num_channels == m.dw.out_channels == 2 * m.dw.in_channels
    assert m.gn.num_channels // m.gn.num_groups == 3   # channels per norm group unchanged
    evaluate(m, data(1)[0][0])


def test_weight_used_outside_its_module_is_blocked_before_any_change():
    torch.manual_seed(0)
    m = Shared()
    with pytest.warns(UserWarning, match=r"c2 \(c2.weight, c2.bias also used outside the module\)"):
        pr = MultiTaskPruner(m, TASKS, "l1", example_inputs=data(1)[0][0], min_channels=1)
    assert (pr.an.layers["c2"].out_groups == -1).all() and (pr.an.layers["c2"].in_groups == -1).all()
    with pytest.warns(UserWarning):
        pr.prune(100)                     # prunes what is safe (c3), and the model still runs
    assert m.c2.weight.shape == (8, 8, 3, 3) and m.c3.out_channels < 8
    evaluate(m, data(1)[0][0])


def test_channels_last_survives_compaction():
    torch.manual_seed(0)
    m = Subclassed().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    x = data(1)[0][0].to(memory_format=torch.channels_last)
    pr = MultiTaskPruner(m, TASKS, "l1", example_inputs=x, optimizer=opt, min_channels=1)
    step(m, pr, opt, x, data(1)[0][1])
    pr.prune(4)
    for conv in (m.c1, m.c2):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert opt.state[conv.weight]["momentum_buffer"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("ranking", ["global", "uniform"])
def test_round_to_keeps_every_producer_a_multiple(ranking):
    torch.manual_seed(0)
    m = Concat()
    k = 4
    pr = MultiTaskPruner(m, TASKS, "l1", example_inputs=data(1)[0][0], min_channels=1, round_to=k, ranking=ranking)
    for n in (7, 5):
        rep = pr.prune(n)
        assert n <= rep.pruned < n + k, (n, rep.pruned)
        assert all(c.out_channels % k == 0 for c in m.convs), [c.out_channels for c in m.convs]
    assert m.bn.num_features == sum(c.out_channels for c in m.convs)
    evaluate(m, data(1)[0][0])


class LayerNorm2d(nn.LayerNorm):
    """torchvision/timm ConvNeXt: LayerNorm over the channels of NCHW, by permuting around it."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """ConvNeXt block: depthwise conv, permute to NHWC, LayerNorm, Linear-GELU-Linear, layer scale
    (torchvision: a [C, 1, 1] parameter after permuting back; timm: a [C] one in NHWC)."""

    def __init__(self, dim, nhwc_scale=False):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1, self.act, self.pw2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.nhwc_scale = nhwc_scale
        self.layer_scale = nn.Parameter(torch.rand(dim) if nhwc_scale else torch.rand(dim, 1, 1))

    def forward(self, x):
        y = self.pw2(self.act(self.pw1(self.norm(self.dw(x).permute(0, 2, 3, 1)))))
        if self.nhwc_scale:
            return x + (self.layer_scale * y).permute(0, 3, 1, 2)
        return x + self.layer_scale * y.permute(0, 3, 1, 2)


class ConvNeXtish(Base):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 2, 2), LayerNorm2d(8))
        self.stage1 = nn.Sequential(CNBlock(8), CNBlock(8, nhwc_scale=True))
        self.down = nn.Sequential(LayerNorm2d(8), nn.Conv2d(8, 12, 2, 2))
        self.stage2 = CNBlock(12)
        self.heads = heads(12)

    def forward(self, x):
        f = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.out(F.interpolate(f, size=x.shape[-2:]))


def test_convnext_permuted_layernorm_linear_and_layer_scale(tmp_path):
    torch.manual_seed(0)
    m = ConvNeXtish()
    x, y = data(1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # nothing left unpruned as not understood
        # only stage 1's residual stream may lose channels here: the LayerNorms must shrink
        full = {"stage1.0.pw1": 32, "stage1.1.pw1": 32, "stage2.pw1": 48, "down.1": 12}
        pr = MultiTaskPruner(m, TASKS, "taylor", example_inputs=x, min_channels=full)
    an = pr.an
    assert pr.unsupported == []
    # the residual stream of stage 1: stem conv, both LayerNorm2d, the depthwise convs, the
    # NHWC LayerNorms, pw2 and both layer scales are one coupled set
    stream = an.layers["stem.0"].out_groups
    for name in ("stem.1", "stage1.0.dw", "stage1.0.norm", "stage1.0.pw2", "stage1.0.layer_scale",
                 "stage1.1.layer_scale", "down.0"):
        assert torch.equal(an.layers[name].out_groups, stream), name
    assert an.layers["stage1.0.layer_scale"].module == "stage1.0"
    assert (an.layers["stage1.0.pw1"].out_groups >= 0).all()     # the MLP's hidden channels
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    pr.optimizer = opt
    step(m, pr, opt, x, y)
    before = {n: p.clone() for n, p in m.named_parameters()}
    rep = pr.prune(3)
    kept = [c for c in range(8) if c not in rep.original_channels.get("stem.0", [])]
    n = len(kept)
    assert rep.pruned == 3 and n == 5, rep.layer_channels
    assert m.stem[1].normalized_shape == (n,) and m.stage1[0].norm.normalized_shape == (n,)
    assert m.stage1[0].layer_scale.shape == (n, 1, 1) and m.stage1[1].layer_scale.shape == (n,)
    torch.testing.assert_close(m.stage1[1].layer_scale.detach(), before["stage1.1.layer_scale"][kept])
    assert m.stage1[0].pw1.in_features == n and m.down[1].in_channels == n
    out = evaluate(m, x)
    assert {t: o.shape for t, o in out.items()} == {t: (2, 2, 8, 8) for t in TASKS}
    step(m, pr, opt, x, y)                 # trains on after compaction
    save_pruned(m, tmp_path / "p.pt")      # LayerNorm's normalized_shape is part of the architecture
    m2 = load_pruned(ConvNeXtish, tmp_path / "p.pt")
    a, b = evaluate(m, x), evaluate(m2, x)
    for t in TASKS:
        torch.testing.assert_close(a[t], b[t])


class Transposed(Base):
    """A channels-last detour by transpose (not permute): Linear on the last dim, then back."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 8)
        self.heads = heads(8)

    def forward(self, x):
        y = F.relu(self.c1(x)).transpose(1, 3)          # [N, W, H, C]
        return self.out(F.relu(self.fc(y)).transpose(3, 1))


def test_transpose_moves_the_channel_dim():
    torch.manual_seed(0)
    m = Transposed()
    pr = MultiTaskPruner(m, TASKS, "l1", example_inputs=data(1)[0][0], min_channels={"fc": 8})
    assert pr.unsupported == [] and (pr.an.layers["c1"].out_groups >= 0).all()
    assert torch.equal(pr.an.layers["fc"].in_groups, pr.an.layers["c1"].out_groups)
    pr.prune(5)
    assert m.fc.in_features == m.c1.out_channels < 8
    evaluate(m, data(1)[0][0])
