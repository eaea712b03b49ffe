"""CIFAR-style ResNets: ResNet-(6n+2), a small fast ResNet, and PreAct ResNet-18."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from famus.models.base import StagedNet, kaiming_init, pool_head, preact_head
from famus.models.blocks import BasicBlock, PreActBlock, conv3x3


def _stem(in_channels: int, width: int) -> nn.Sequential:
    """conv3x3 + BN + ReLU: ``(B, in_channels, H, W) -> (B, width, H, W)``."""
    return nn.Sequential(conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU())


def _basic_resnet(
    blocks_per_stage: list[int],
    widths: list[int],
    strides: list[int],
    num_classes: int,
    in_channels: int,
    shortcut: str,
) -> StagedNet:
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=_stem(in_channels, widths[0]))
    in_planes = widths[0]
    for s, (n, planes, stride) in enumerate(zip(blocks_per_stage, widths, strides, strict=True), start=1):
        for b in range(n):
            stages[f"layer{s}_{b}"] = BasicBlock(in_planes, planes, stride if b == 0 else 1, shortcut)
            in_planes = planes
    stages["head"] = pool_head()
    stages["fc"] = nn.Linear(in_planes, num_classes)
    return kaiming_init(StagedNet(stages))


def resnet_cifar(
    depth: int = 32, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A"
) -> StagedNet:
    """CIFAR ResNet of depth ``6n+2`` (He et al., 2016): 3 stages of ``n`` basic blocks, widths 16/32/64.

    ResNet-20/32/44/56/110 have about 0.27M/0.46M/0.66M/0.85M/1.7M parameters (option-A shortcut).

    Args:
        depth: ``6n + 2`` (20, 32, 44, 56, 110, ...).
        num_classes: number of output logits.
        in_channels: input channels (3 for RGB).
        shortcut: ``"A"`` (zero-pad, the paper's CIFAR choice) or ``"B"`` (1x1 conv + BN).

    Input ``(B, in_channels, H, W)`` (32x32 for CIFAR; any size works); output ``(B, num_classes)``.
    Children: ``stem``, ``layer{1..3}_{0..n-1}``, ``head`` (pool + flatten, 64 features), ``fc``.
    """
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, ...), got {depth}")
    n = (depth - 2) // 6
    return _basic_resnet([n, n, n], [16, 32, 64], [1, 2, 2], num_classes, in_channels, shortcut)


def small_resnet(
    num_classes: int = 10, in_channels: int = 1, width: int = 16, shortcut: str = "A"
) -> StagedNet:
    """A small, fast ResNet (8 layers) for 28x28 grayscale inputs such as MNIST / Fashion-MNIST.

    Stem conv, then 3 stages of one :class:`BasicBlock` each with widths ``width * (1, 2, 4)`` and
    strides 1/2/2 (28 -> 28 -> 14 -> 7), global pooling and a linear classifier; about 0.07M
    parameters at ``width=16``, quick to train on a laptop CPU.

    Input ``(B, in_channels, 28, 28)`` (any size works); output ``(B, num_classes)``.
    Children: ``stem``, ``layer1_0``, ``layer2_0``, ``layer3_0``, ``head``, ``fc``.
    """
    widths = [width, 2 * width, 4 * width]
    return _basic_resnet([1, 1, 1], widths, [1, 2, 2], num_classes, in_channels, shortcut)


def preact_resnet18(num_classes: int = 10, in_channels: int = 3) -> StagedNet:
    """Pre-activation ResNet-18 (He et al., 2016), CIFAR variant: 3x3 stem conv, no max-pool.

    Four stages of two :class:`PreActBlock` each, widths 64/128/256/512, strides 1/2/2/2,
    final BN + ReLU before pooling; about 11.17M parameters.

    Input ``(B, in_channels, 32, 32)`` (any size works); output ``(B, num_classes)``.
    Children: ``stem`` (one conv), ``layer{1..4}_{0,1}``, ``head`` (BN + ReLU + pool, 512 features), ``fc``.
    """
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(conv3x3(in_channels, 64)))
    in_planes = 64
    for s, (planes, stride) in enumerate(zip([64, 128, 256, 512], [1, 2, 2, 2], strict=True), start=1):
        for b in range(2):
            stages[f"layer{s}_{b}"] = PreActBlock(in_planes, planes, stride if b == 0 else 1)
            in_planes = planes
    stages["head"] = preact_head(in_planes)
    stages["fc"] = nn.Linear(in_planes, num_classes)
    return kaiming_init(StagedNet(stages))
