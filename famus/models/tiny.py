"""Tiny models for quick experiments and tests: a LeNet-style CNN with BN and an MLP."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from famus.models.base import StagedNet, kaiming_init


def _conv_bn_pool(in_planes: int, planes: int) -> nn.Sequential:
    """5x5 conv + BN + ReLU + 2x2 max-pool: ``(B, in_planes, H, W) -> (B, planes, H//2, W//2)``."""
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, kernel_size=5, padding=2, bias=False),
        nn.BatchNorm2d(planes),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


def lenet(num_classes: int = 10, in_channels: int = 1, width: int = 16, hidden: int = 128) -> StagedNet:
    """A LeNet-style CNN with batch norm: two conv-BN-ReLU-pool stages and a hidden linear layer.

    Input ``(B, in_channels, H, W)`` with ``H, W >= 4`` (28x28 or 32x32 typically); output
    ``(B, num_classes)``. About 0.1M parameters at the defaults.
    Children: ``stem`` (width ch), ``conv2`` (2*width ch), ``head`` (adaptive 4x4 avg-pool + flatten),
    ``hidden`` (linear + ReLU, ``hidden`` features), ``fc``.
    """
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=_conv_bn_pool(in_channels, width),
        conv2=_conv_bn_pool(width, 2 * width),
        head=nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten()),
        hidden=nn.Sequential(nn.Linear(2 * width * 16, hidden), nn.ReLU()),
        fc=nn.Linear(hidden, num_classes),
    )
    return kaiming_init(StagedNet(stages))


def mlp(
    num_classes: int = 10,
    in_channels: int = 1,
    hidden: int | Sequence[int] = (256,),
    input_size: int | Sequence[int] = 28,
) -> StagedNet:
    """A multi-layer perceptron on flattened images (or plain feature vectors).

    Args:
        num_classes: number of output logits.
        in_channels: input channels; with ``input_size=1`` the input may be ``(B, in_channels)`` features.
        hidden: width(s) of the hidden ReLU layers (an int for one layer; ``()`` for logistic regression).
        input_size: spatial size ``H`` (square) or ``(H, W)``.

    Input ``(B, in_channels, H, W)``; output ``(B, num_classes)``.
    Children: ``flatten``, ``hidden{0..}`` (linear + ReLU), ``fc``.
    """
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    features = in_channels * math.prod(size)
    stages: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    for i, h in enumerate(hidden):
        stages[f"hidden{i}"] = nn.Sequential(nn.Linear(features, h), nn.ReLU())
        features = h
    stages["fc"] = nn.Linear(features, num_classes)
    return kaiming_init(StagedNet(stages))
