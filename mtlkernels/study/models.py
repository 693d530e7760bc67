"""Multi-task dense-prediction networks: a shared backbone and one ASPP-style head per task.

* :class:`VGG16MTL` -- the network of Garg, Zhang, Guan (2023): the 13 3x3 convolutions of VGG16
  (64-64-M-128-128-M-256x3-M-512x3-M-512x3-M, optional BatchNorm, a width multiplier for small runs)
  shared by all tasks, and per task a head. :func:`authors_vgg16` is the authors' exact network
  (``MTLNet`` of their code: convs with biases, no BatchNorm, all 5 max-pools, output stride 32, and
  per task a :class:`DeepLabHead` with rates 1/2/4/6); with fewer stride-2 pools the later stages
  are dilated instead (DeepLab-LargeFOV: 3 pools, output stride 8).
* :class:`ResNetMTL` -- a ResNet-18/34 DeepLab-style backbone (stride-2 stem, dilated last stages,
  output stride 8) with the same heads.

Every model's ``forward(x)`` returns ``{task: prediction}`` upsampled to the input size:
``seg`` logits ``[N, classes, H, W]``, ``depth`` ``[N, 1, H, W]``, ``normal`` ``[N, 3, H, W]``
(raw; losses and metrics normalise the normals). The forwards have no data-dependent Python
control flow, so :func:`torch.fx.symbolic_trace` traces them (the pruning driver relies on it).
The models take their configuration as keyword arguments only, so ``Model(**model.config)``
rebuilds the same architecture (used by save / load of pruned models).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_TASKS",
    "ASPPHead",
    "DeepLabHead",
    "VGG16MTL",
    "authors_vgg16",
    "ResNetMTL",
    "BasicBlock",
    "build_model",
    "MODEL_NAMES",
    "head_output_layers",
]

#: task name -> output channels of the paper's three tasks (NYUv2: 13 classes).
DEFAULT_TASKS: Dict[str, int] = {"seg": 13, "depth": 1, "normal": 3}

VGG16_LAYOUT: List = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class ASPPHead(nn.Module):
    """ASPP-style task head: parallel dilated 3x3 convs (+ReLU), summed or concatenated, then a 1x1.

    ``merge="sum"`` (DeepLab-v2 / the paper's code: one branch per rate, each ending at the
    task's channels, outputs summed) is realised here as branches of ``mid`` channels that are
    summed and followed by a shared 1x1 ``out`` conv; ``merge="concat"`` concatenates the branches
    (DeepLab-v3 style) before the 1x1.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int = 64,
                 rates: Sequence[int] = (1, 2, 4, 6), merge: str = "sum", bn: bool = False):
        super().__init__()
        if merge not in ("sum", "concat"):
            raise ValueError(f"merge must be 'sum' or 'concat', got {merge!r}")
        self.merge = merge
        self.branches = nn.ModuleList()
        for r in rates:
            layers: List[nn.Module] = [nn.Conv2d(in_channels, mid_channels, 3, padding=r, dilation=r, bias=not bn)]
            if bn:
                layers.append(nn.BatchNorm2d(mid_channels))
            layers.append(nn.ReLU(inplace=True))
            self.branches.append(nn.Sequential(*layers))
        merged = mid_channels * (len(rates) if merge == "concat" else 1)
        self.out = nn.Conv2d(merged, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [b(x) for b in self.branches]
        if self.merge == "concat":
            y = torch.cat(ys, dim=1)
        else:
            y = ys[0]
            for extra in ys[1:]:
                y = y + extra
        return self.out(y)


class DeepLabHead(nn.Module):
    """The authors' head (DeepLab-v2 ASPP, their ``SmallASPPHeadNode``): one branch per rate, each a
    dilated 3x3 conv -> ReLU -> dropout -> 1x1 conv -> ReLU -> dropout -> 1x1 conv to the task's
    channels; the branches' outputs are summed. (They use 1024 mid channels and dropout 0.5.)"""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int = 1024,
                 rates: Sequence[int] = (1, 2, 4, 6), dropout: float = 0.5):
        super().__init__()
        self.branches = nn.ModuleList()
        for r in rates:
            self.branches.append(nn.Sequential(
                nn.Conv2d(in_channels, mid_channels, 3, padding=r, dilation=r), nn.ReLU(inplace=True),
                nn.Dropout(dropout), nn.Conv2d(mid_channels, mid_channels, 1), nn.ReLU(inplace=True),
                nn.Dropout(dropout), nn.Conv2d(mid_channels, out_channels, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branches[0](x)
        for b in self.branches[1:]:
            y = y + b(x)
        return y


class _MultiTaskBase(nn.Module):
    tasks: Dict[str, int]
    heads: nn.ModuleDict

    def _make_heads(self, in_channels: int, tasks: Mapping[str, int], head_channels: int,
                    rates: Sequence[int], merge: str, bn: bool, head: str = "aspp", dropout: float = 0.5) -> None:
        if head == "deeplab":
            self.heads = nn.ModuleDict({t: DeepLabHead(in_channels, c, head_channels, rates, dropout)
                                        for t, c in tasks.items()})
        elif head == "aspp":
            self.heads = nn.ModuleDict({
                t: ASPPHead(in_channels, c, head_channels, rates, merge, bn) for t, c in tasks.items()
            })
        else:
            raise ValueError(f"head must be 'aspp' or 'deeplab', got {head!r}")

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        size = (x.shape[-2], x.shape[-1])
        f = self.backbone(x)
        return {
            t: F.interpolate(h(f), size=size, mode="bilinear", align_corners=False)
            for t, h in self.heads.items()
        }

    @property
    def task_names(self) -> List[str]:
        return list(self.tasks)

    def backbone_convs(self) -> List[str]:
        """Qualified names of the backbone's conv layers (the filters the paper prunes)."""
        return [f"backbone.{n}" for n, m in self.backbone.named_modules() if isinstance(m, nn.Conv2d)]

    def head_output_layers(self) -> List[str]:
        """Names of the heads' final 1x1 convs: they must keep their task's channels (never prune)."""
        if isinstance(next(iter(self.heads.values())), DeepLabHead):
            return [f"heads.{t}.branches.{i}.{len(b) - 1}" for t in self.tasks
                    for i, b in enumerate(self.heads[t].branches)]
        return [f"heads.{t}.out" for t in self.tasks]


class VGG16MTL(_MultiTaskBase):
    """VGG16 backbone (13 convs) shared by all tasks + one :class:`ASPPHead` per task.

    Args:
        tasks: task -> output channels (default: seg 13, depth 1, normal 3).
        width: channel multiplier (1.0 = VGG16's 64..512; 0.125 -> 8..64 for CPU runs).
        bn: BatchNorm after every conv.
        pools: how many of the 5 max-pools keep stride 2 (the authors: 5, output stride 32;
            DeepLab-LargeFOV: 3, conv5 dilated by 2, output stride 8); the stages after the last
            stride-2 pool are dilated instead. The 5th pool, after conv5_3, exists only with ``pools=5``.
        head_channels: mid channels of the head branches (the authors: 1024; default scales with
            ``width``: 128 * width for ``aspp``, 1024 * width for ``deeplab``, at least 16).
        rates: dilation rates of the head branches.
        merge: ``"sum"`` or ``"concat"`` (``aspp`` head).
        head: ``"aspp"`` (:class:`ASPPHead`) or ``"deeplab"`` (:class:`DeepLabHead`, the authors').
        dropout: the ``deeplab`` head's dropout.
        init: ``"default"`` (PyTorch's) or ``"kaiming"`` (the authors' :meth:`init_backbone`).
    """

    def __init__(self, *, tasks: Optional[Mapping[str, int]] = None, width: float = 1.0, bn: bool = True,
                 pools: int = 3, head_channels: Optional[int] = None, rates: Sequence[int] = (1, 2, 4, 6),
                 merge: str = "sum", in_channels: int = 3, head: str = "aspp", dropout: float = 0.5,
                 init: str = "default"):
        super().__init__()
        tasks = dict(DEFAULT_TASKS if tasks is None else tasks)
        if not 0 <= pools <= 5:
            raise ValueError(f"pools must be in 0..5, got {pools}")
        head_channels = head_channels or max(16, _ch(1024 if head == "deeplab" else 128, width))
        self.tasks = tasks
        self.config = dict(tasks=tasks, width=width, bn=bn, pools=pools, head_channels=head_channels,
                           rates=list(rates), merge=merge, in_channels=in_channels, head=head, dropout=dropout,
                           init=init)
        layers: List[nn.Module] = []
        c_in, n_pool, dilation = in_channels, 0, 1
        for v in VGG16_LAYOUT:
            if v == "M":
                if n_pool < pools:
                    layers.append(nn.MaxPool2d(2, 2))
                else:  # DeepLab: keep resolution, dilate the following convs instead
                    dilation *= 2
                n_pool += 1
                continue
            c = _ch(v, width)
            layers.append(nn.Conv2d(c_in, c, 3, padding=dilation, dilation=dilation, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.ReLU(inplace=True))
            c_in = c
        self.backbone = nn.Sequential(*layers)
        self.out_channels = c_in
        self._make_heads(c_in, tasks, head_channels, rates, merge, bn, head, dropout)
        if init not in ("default", "kaiming"):
            raise ValueError(f"init must be 'default' or 'kaiming', got {init!r}")
        if init == "kaiming":
            self.init_backbone()

    def init_backbone(self) -> None:
        """The authors' initialisation of the backbone (torchvision's VGG): Kaiming-normal conv weights
        (fan-out, ReLU gain), zero biases, BN at identity; the heads keep PyTorch's default. Without
        BN, PyTorch's default (variance 1/(3 fan-in)) shrinks the signal by ~6x over 13 layers."""
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def authors_vgg16(*, tasks: Optional[Mapping[str, int]] = None, width: float = 1.0, **kw) -> VGG16MTL:
    """The authors' ``MTLNet`` (VGG16, biases, no BN, 5 stride-2 max-pools; DeepLab heads with rates
    1/2/4/6 and 1024 * width mid channels, dropout 0.5, Kaiming backbone), at ``width``; ``kw`` overrides."""
    return VGG16MTL(**dict(dict(tasks=tasks, width=width, bn=False, pools=5, rates=(1, 2, 4, 6),
                                head="deeplab", dropout=0.5, init="kaiming"), **kw))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class ResNetMTL(_MultiTaskBase):
    """ResNet-18/34 DeepLab-style backbone (layer3/4 dilated 2/4: output stride 8) + ASPP heads.

    Args:
        depth: 18 or 34.
        width: channel multiplier (1.0 = 64..512).
        stem_pool: keep the stem's max-pool (ImageNet ResNet); with ``False`` the stem only
            strides by 2 and the output stride is 4 (better for 64x64 inputs).
    """

    def __init__(self, *, tasks: Optional[Mapping[str, int]] = None, depth: int = 18, width: float = 1.0,
                 head_channels: Optional[int] = None, rates: Sequence[int] = (1, 2, 4, 6),
                 merge: str = "sum", stem_pool: bool = True, in_channels: int = 3):
        super().__init__()
        blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}
        if depth not in blocks:
            raise ValueError(f"depth must be 18 or 34, got {depth}")
        tasks = dict(DEFAULT_TASKS if tasks is None else tasks)
        head_channels = head_channels or max(16, _ch(128, width))
        self.tasks = tasks
        self.config = dict(tasks=tasks, depth=depth, width=width, head_channels=head_channels,
                           rates=list(rates), merge=merge, stem_pool=stem_pool, in_channels=in_channels)
        c0 = _ch(64, width)
        stem: List[nn.Module] = [nn.Conv2d(in_channels, c0, 7, 2, 3, bias=False), nn.BatchNorm2d(c0),
                                 nn.ReLU(inplace=True)]
        if stem_pool:
            stem.append(nn.MaxPool2d(3, 2, 1))
        layers: List[nn.Module] = list(stem)
        inplanes = c0
        # (planes, stride, dilation): layer3/layer4 dilated instead of strided (DeepLab)
        plan = [(64, 1, 1), (128, 2, 1), (256, 1, 2), (512, 1, 4)]
        for (planes, stride, dil), n in zip(plan, blocks[depth]):
            p = _ch(planes, width)
            stage = [BasicBlock(inplanes, p, stride, dil)]
            stage += [BasicBlock(p, p, 1, dil) for _ in range(n - 1)]
            layers.append(nn.Sequential(*stage))
            inplanes = p
        self.backbone = nn.Sequential(*layers)
        self.out_channels = inplanes
        self._make_heads(inplanes, tasks, head_channels, rates, merge, True)


MODEL_NAMES = ("vgg16", "resnet18", "resnet34")


def build_model(name: str, **kwargs) -> _MultiTaskBase:
    """Build a model by name: ``vgg16``, ``resnet18`` or ``resnet34`` (kwargs go to the class)."""
    if name == "vgg16":
        return VGG16MTL(**kwargs)
    if name in ("resnet18", "resnet34"):
        kwargs.pop("bn", None)
        kwargs.pop("pools", None)
        return ResNetMTL(depth=int(name[6:]), **kwargs)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def head_output_layers(model: nn.Module) -> List[str]:
    """Names of the task heads' output layers (exclude them from pruning)."""
    return model.head_output_layers()  # type: ignore[operator]
