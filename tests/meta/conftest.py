"""Tiny float64 models and batches for exactness tests."""

import pytest
import torch
from torch import nn


class TinyResNet(nn.Module):
    """A standard residual net with BatchNorm, written with no famus import."""

    def __init__(self, classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        r = torch.relu(self.bn2(self.conv2(h)))
        h = torch.relu(h + self.bn3(self.conv3(r)))
        return self.fc(h.mean((2, 3)))


def make_batches(seed=0, n=6, m=5, classes=3, size=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    xm = torch.randn(m, 1, size, size, generator=g, dtype=dtype)
    ym = torch.randint(0, classes, (m,), generator=g)
    return x, y, xm, ym


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every test here runs on one thread (the shared ``one_thread`` fixture in tests/conftest.py)."""


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = TinyResNet().double()
    return model, make_batches()
