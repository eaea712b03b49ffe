"""Residual blocks: post-activation CIFAR ResNet, pre-activation ResNet, wide ResNet.

All ReLUs and additions are out of place so that stage outputs cached by a
meta-gradient engine are never modified by a later stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Parameter-free "option A" shortcut: spatial subsampling plus zero-padded channels.

    ``(B, in_planes, H, W) -> (B, out_planes, ceil(H/stride), ceil(W/stride))``; the new
    channels are split evenly before and after the old ones (as in He et al., 2016).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"option-A shortcut cannot shrink channels ({in_planes} -> {out_planes})")
        self.stride = stride
        self.pad_before = (out_planes - in_planes) // 2
        self.pad_after = out_planes - in_planes - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


class BasicBlock(nn.Module):
    """Post-activation basic block of the CIFAR ResNets (He et al., 2016).

    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first conv (and of the shortcut).
        shortcut: when the shape changes, ``"A"`` (zero-pad, parameter-free, the CIFAR
            original) or ``"B"`` (1x1 conv + BN). Identity when the shape is kept.

    Shape: ``(B, in_planes, H, W) -> (B, planes, ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut.upper() == "A":
            self.shortcut = PadShortcut(in_planes, planes, stride)
        elif shortcut.upper() == "B":
            self.shortcut = nn.Sequential(conv1x1(in_planes, planes, stride), nn.BatchNorm2d(planes))
        else:
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al., 2016, "Identity Mappings").

    ``o = relu(bn1(x)); conv2(dropout(relu(bn2(conv1(o))))) + shortcut``, where the shortcut is
    ``x`` itself, or a 1x1 conv of ``o`` when the shape changes.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first conv (and of the shortcut).
        dropout: dropout rate between the two convs (0 disables it).

    Shape: ``(B, in_planes, H, W) -> (B, planes, ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(planes, planes)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = conv1x1(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        sc = x if self.shortcut is None else self.shortcut(o)
        out = self.conv1(o)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + sc


class WideBasic(PreActBlock):
    """Wide-ResNet block (Zagoruyko & Komodakis, 2016): a pre-activation block with dropout.

    Same computation as :class:`PreActBlock` (dropout between the convs, 1x1 conv shortcut
    on the pre-activated input when the shape changes).

    Shape: ``(B, in_planes, H, W) -> (B, planes, ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__(in_planes, planes, stride, dropout)
