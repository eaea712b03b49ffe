"""Tiny float64 models and batches for exactness tests."""

import pytest
import torch
from torch import nn

import famus
from famus.meta.engines import build_engine
from famus.meta.engines.auto import Auto
from famus.meta.engines.directional import FD, JVP
from famus.meta.engines.famus import FaMUS
from famus.meta.engines.fixed import AllLayers
from famus.meta.engines.second_order import SecondOrder
from famus.meta.options import option_names

__all__ = ["AllLayers", "FaMUS", "SecondOrder", "FORWARD", "engines", "engine_options", "methods"]


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


def engine_options(name: str, layers=("fc",)) -> dict:
    """Options a registered engine needs on the test models: a block of ``layers`` where it takes one; ``auto``
    pinned to ``fd`` (two learners compared bit for bit must not time their choices apart)."""
    if name == "auto":
        return {"choice": "fd"}
    return {"layers": list(layers)} if "layers" in option_names(famus.ENGINES.get(name)) else {}


def engines(*, policy: type | None = None, backend: type | tuple[type, ...] | None = None) -> list[str]:
    """Registered engine names, from the registry: those with this layer ``policy`` and ``backend`` type.

    Policies: :class:`AllLayers` (exact, jvp, fd), :class:`FaMUS`, ...; backends: :class:`SecondOrder`,
    :class:`JVP`, :class:`FD`. ``auto`` has no fixed backend (it times exact's and fd's on its first step:
    tests/meta/test_auto.py), so a backend filter leaves it out.
    """
    out = []
    for name in famus.ENGINES.names():
        engine = build_engine(name, **engine_options(name))
        if backend is not None and isinstance(engine, Auto):
            continue
        if (policy is None or type(engine) is policy) and (backend is None or isinstance(engine.backend, backend)):
            out.append(name)
    return out


def methods(**attributes) -> list[str]:
    """Registered method names, from the registry: those whose class has these attribute values."""
    classes = {n: famus.METHODS.get(n) for n in famus.METHODS.names()}
    return [n for n, cls in classes.items() if all(getattr(cls, k) == v for k, v in attributes.items())]


FORWARD = (JVP, FD)  # the forward-mode backends
