"""Tiny multi-task networks for the pruning tests (each forward returns {task: output})."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TASKS = ["seg", "depth", "normal"]
OUT = {"seg": 5, "depth": 1, "normal": 3}


def cbr(i, o, k=3, s=1, d=1, groups=1):
    return nn.Sequential(nn.Conv2d(i, o, k, s, padding=d * (k // 2), dilation=d, groups=groups, bias=False),
                         nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class VGGMT(nn.Module):
    """VGG-style backbone; two dense heads and one 'normal' head through flatten -> linear."""

    def __init__(self, w=8):
        super().__init__()
        self.backbone = nn.Sequential(cbr(3, w), cbr(w, w), nn.MaxPool2d(2), cbr(w, 2 * w), cbr(2 * w, 2 * w))
        self.heads = nn.ModuleDict({
            "seg": nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, OUT["seg"], 1)),
            "depth": nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, OUT["depth"], 1)),
        })
        self.norm_conv = nn.Conv2d(2 * w, w, 3, stride=2, padding=1)
        self.norm_fc1 = nn.Linear(w * 4 * 4, 16)
        self.norm_fc2 = nn.Linear(16, OUT["normal"])

    def forward(self, x):
        f = self.backbone(x)
        out = {t: F.interpolate(h(f), size=x.shape[-2:], mode="bilinear", align_corners=False)
               for t, h in self.heads.items()}
        n = F.relu(self.norm_conv(f))
        n = torch.flatten(n, 1)                    # channel c -> block of 16 features
        out["normal"] = self.norm_fc2(F.relu(self.norm_fc1(n)))
        return out


class BasicBlock(nn.Module):
    def __init__(self, i, o, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(i, o, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(o)
        self.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(o)
        self.downsample = None
        if stride != 1 or i != o:
            self.downsample = nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + idt)


class Bottleneck(nn.Module):
    def __init__(self, i, mid, o, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(i, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, o, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(o)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or i != o:
            self.downsample = nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        idt = x
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.downsample is not None:
            idt = self.downsample(x)
        y += idt
        return self.relu(y)


class ResNetMT(nn.Module):
    """BasicBlocks (with/without downsample) then Bottlenecks (with/without downsample)."""

    def __init__(self, w=8):
        super().__init__()
        self.stem = cbr(3, w)
        self.layer1 = nn.Sequential(BasicBlock(w, w), BasicBlock(w, 2 * w, 2))
        self.layer2 = nn.Sequential(Bottleneck(2 * w, w, 3 * w), Bottleneck(3 * w, w, 3 * w))
        self.heads = nn.ModuleDict({t: nn.Sequential(cbr(3 * w, w), nn.Conv2d(w, c, 1)) for t, c in OUT.items()})

    def forward(self, x):
        f = self.layer2(self.layer1(self.stem(x)))
        return {t: h(f) for t, h in self.heads.items()}


class ASPP(nn.Module):
    def __init__(self, i, mid, o, rates=(1, 2, 3)):
        super().__init__()
        self.b0 = nn.Sequential(nn.Conv2d(i, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU())
        self.branches = nn.ModuleList([cbr(i, mid, 3, d=r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(i, mid, 1), nn.ReLU())
        self.project = cbr(mid * (len(rates) + 2), mid, 1)
        self.out = nn.Conv2d(mid, o, 1)

    def forward(self, x):
        ys = [self.b0(x)] + [b(x) for b in self.branches]
        p = F.interpolate(self.pool(x), size=x.shape[-2:], mode="nearest")
        y = torch.cat(ys + [p], dim=1)
        return self.out(self.project(y))


class ASPPMT(nn.Module):
    """Backbone + per-task ASPP heads (concatenation of branches)."""

    def __init__(self, w=8):
        super().__init__()
        self.backbone = nn.Sequential(cbr(3, w), cbr(w, 2 * w, s=2), cbr(2 * w, 2 * w))
        self.heads = nn.ModuleDict({t: ASPP(2 * w, w, c) for t, c in OUT.items()})

    def forward(self, x):
        f = self.backbone(x)
        return tuple(self.heads[t](f) for t in TASKS)  # tuple output


class InvertedResidual(nn.Module):
    def __init__(self, i, o, expand, stride=1):
        super().__init__()
        h = i * expand
        self.use_res = stride == 1 and i == o
        self.conv = nn.Sequential(
            nn.Conv2d(i, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
            nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
            nn.Conv2d(h, o, 1, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.use_res else y


class DepthwiseMT(nn.Module):
    """MobileNetV2-style backbone (depthwise convs, inverted residuals) + light heads."""

    def __init__(self, w=8):
        super().__init__()
        self.stem = cbr(3, w)
        self.dw = nn.Sequential(nn.Conv2d(w, w, 3, 1, 1, groups=w), nn.BatchNorm2d(w), nn.Hardswish())
        self.blocks = nn.Sequential(InvertedResidual(w, 2 * w, 2, 2), InvertedResidual(2 * w, 2 * w, 2))
        self.heads = nn.ModuleDict({t: nn.Sequential(
            nn.Conv2d(2 * w, 2 * w, 3, 1, 1, groups=2 * w), nn.ReLU(), nn.Conv2d(2 * w, w, 1), nn.ReLU(),
            nn.Conv2d(w, c, 1)) for t, c in OUT.items()})

    def forward(self, x):
        f = self.blocks(self.dw(self.stem(x)))
        return {t: h(f) for t, h in self.heads.items()}


MODELS = {"vgg": VGGMT, "resnet": ResNetMT, "aspp": ASPPMT, "depthwise": DepthwiseMT}


def outputs_dict(out):
    if isinstance(out, dict):
        return out
    return dict(zip(TASKS, out))


def task_losses(out, target):
    """Per-task losses against fixed random targets of the same shapes."""
    out = outputs_dict(out)
    return {t: F.mse_loss(out[t], target[t]) for t in TASKS}


def make_data(model_name, n_batches=4, batch=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(batch, 3, size, size, generator=g) for _ in range(n_batches)]
    torch.manual_seed(seed)
    m = MODELS[model_name]()
    with torch.no_grad():
        m.eval()
        shapes = {t: o.shape for t, o in outputs_dict(m(xs[0])).items()}
    ys = [{t: torch.randn(s, generator=g) for t, s in shapes.items()} for _ in range(n_batches)]
    return list(zip(xs, ys))

