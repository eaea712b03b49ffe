"""Residual blocks: shapes, shortcuts, and parameter-free option A."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from famus.models import BasicBlock, PadShortcut, PreActBlock, WideBasic


@pytest.mark.parametrize("size", [32, 7, 28])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_basic_block_downsampling(size: int, shortcut: str) -> None:
    block = BasicBlock(16, 32, stride=2, shortcut=shortcut)
    out = block(torch.randn(2, 16, size, size))
    assert out.shape == (2, 32, (size + 1) // 2, (size + 1) // 2)
    assert (out >= 0).all()  # post-activation: ends with ReLU


def test_option_a_is_parameter_free_and_option_b_is_not() -> None:
    a = BasicBlock(16, 32, stride=2, shortcut="A")
    b = BasicBlock(16, 32, stride=2, shortcut="B")
    assert isinstance(a.shortcut, PadShortcut) and not list(a.shortcut.parameters())
    n_b = sum(p.numel() for p in b.shortcut.parameters())
    assert n_b == 16 * 32 + 2 * 32  # 1x1 conv + BN
    assert isinstance(BasicBlock(16, 16).shortcut, nn.Identity)
    with pytest.raises(ValueError, match="shortcut"):
        BasicBlock(16, 32, stride=2, shortcut="C")


def test_pad_shortcut_keeps_old_channels_in_the_middle() -> None:
    x = torch.randn(1, 4, 6, 6)
    y = PadShortcut(4, 8, stride=2)(x)
    assert y.shape == (1, 8, 3, 3)
    torch.testing.assert_close(y[:, 2:6], x[:, :, ::2, ::2])
    assert (y[:, :2] == 0).all() and (y[:, 6:] == 0).all()


@pytest.mark.parametrize("cls", [PreActBlock, WideBasic])
def test_preact_blocks(cls: type[PreActBlock]) -> None:
    same = cls(8, 8)
    assert same.shortcut is None
    down = cls(8, 16, stride=2, dropout=0.5)
    assert isinstance(down.shortcut, nn.Conv2d) and down.shortcut.kernel_size == (1, 1)
    assert isinstance(down.dropout, nn.Dropout)
    x = torch.randn(2, 8, 9, 9)
    assert same(x).shape == (2, 8, 9, 9)
    assert down(x).shape == (2, 16, 5, 5)
    x_copy = x.clone()
    down(x)
    torch.testing.assert_close(x, x_copy)  # blocks never modify their input in place
