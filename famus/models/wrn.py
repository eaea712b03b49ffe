"""Wide ResNets (Zagoruyko & Komodakis, 2016): WRN-d-k for any depth ``6n+4`` and width ``k``."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from famus.models.base import StagedNet, kaiming_init, preact_head
from famus.models.blocks import WideBasic, conv3x3


def wide_resnet(
    depth: int = 28,
    widen_factor: int = 10,
    num_classes: int = 10,
    in_channels: int = 3,
    dropout: float = 0.0,
) -> StagedNet:
    """WRN-``depth``-``widen_factor``: 3 stages of ``n = (depth-4)/6`` :class:`WideBasic` blocks.

    Stage widths ``16k / 32k / 64k``, strides 1/2/2, 3x3 stem conv to 16 channels, final BN + ReLU
    before pooling. WRN-28-10 has about 36.5M parameters, WRN-40-2 about 2.2M, WRN-16-8 about 11M.

    Args:
        depth: ``6n + 4`` (16, 22, 28, 40, ...).
        widen_factor: width multiplier ``k`` (any positive integer).
        num_classes: number of output logits.
        in_channels: input channels (3 for RGB).
        dropout: dropout rate inside each block (the paper uses 0.3 on CIFAR; 0 disables).

    Input ``(B, in_channels, 32, 32)`` (any size works); output ``(B, num_classes)``.
    Children: ``stem`` (one conv), ``layer{1..3}_{0..n-1}``, ``head`` (BN + ReLU + pool,
    ``64k`` features), ``fc``.
    """
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"Wide ResNet depth must be 6n+4 with n >= 1 (16, 22, 28, 40, ...), got {depth}")
    if widen_factor < 1:
        raise ValueError(f"widen_factor must be a positive integer, got {widen_factor}")
    n = (depth - 4) // 6
    widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(conv3x3(in_channels, 16)))
    in_planes = 16
    for s, (planes, stride) in enumerate(zip(widths, [1, 2, 2], strict=True), start=1):
        for b in range(n):
            stages[f"layer{s}_{b}"] = WideBasic(in_planes, planes, stride if b == 0 else 1, dropout)
            in_planes = planes
    stages["head"] = preact_head(in_planes)
    stages["fc"] = nn.Linear(in_planes, num_classes)
    return kaiming_init(StagedNet(stages))
