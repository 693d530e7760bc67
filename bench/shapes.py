"""Layer shapes of the benchmark networks (prunable conv weights of the backbones), built by hand so
the benchmarks need no torchvision."""
from __future__ import annotations

from typing import List, Tuple

Shape = Tuple[int, ...]


def vgg16() -> List[Shape]:
    """The 13 3x3 convs of VGG16 (14.7 M weights): the paper's backbone."""
    cfg = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    shapes, cin = [], 3
    for c in cfg:
        shapes.append((c, cin, 3, 3))
        cin = c
    return shapes


def resnet(blocks=(3, 4, 6, 3), width: int = 64) -> List[Shape]:
    """Conv weights of a Bottleneck ResNet backbone (ResNet-50: (3, 4, 6, 3); ResNet-152:
    (3, 8, 36, 3)); ``width`` scales every stage (64 = the standard network)."""
    shapes: List[Shape] = [(width, 3, 7, 7)]
    cin = width
    for stage, n in enumerate(blocks):
        mid = width * 2**stage
        out = mid * 4
        for b in range(n):
            shapes += [(mid, cin, 1, 1), (mid, mid, 3, 3), (out, mid, 1, 1)]
            if b == 0:
                shapes.append((out, cin, 1, 1))  # downsample
            cin = out
    return shapes


NETWORKS = {
    "vgg16": vgg16,
    "resnet50": lambda: resnet((3, 4, 6, 3)),
    "resnet152": lambda: resnet((3, 8, 36, 3)),
    "resnet_tiny": lambda: resnet((1, 1, 1, 1), width=4),  # for smoke runs of the bench scripts
}


def numel(shapes) -> int:
    total = 0
    for s in shapes:
        n = 1
        for d in s:
            n *= d
        total += n
    return total
