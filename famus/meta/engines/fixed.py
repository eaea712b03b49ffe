"""Engines whose contributing layers are fixed or drawn uniformly: ``exact``, ``jvp``, ``fd``, ``block``, ``random``.

Each is a layer policy here over a backend (:mod:`.second_order`, :mod:`.directional`), registered
with :func:`~famus.meta.engines.base.over`.
"""

from __future__ import annotations

import torch

from famus.meta.engines.base import ENGINES, Backend, Engine, MetaBatch, MetaResult, over, select_layers
from famus.meta.engines.directional import FD, JVP
from famus.meta.engines.second_order import SecondOrder


class AllLayers(Engine):
    """Every layer contributes (or the fixed ``layers`` of :meth:`compute`): the full meta gradient."""

    name = "exact"
    default_backend = SecondOrder

    def __init__(self, backend: Backend | None = None, name: str | None = None) -> None:
        super().__init__(backend, name)

    def run(self, batch: MetaBatch, generator: torch.Generator, fixed: set[str] | None) -> MetaResult:
        return self.backend(batch, fixed)


class Block(Engine):
    """Only a fixed list of layers contributes (Table 4's pre-specified block).

    Args:
        layers: layer names or module prefixes, e.g. ``["layer3.4"]`` for one residual block.
    """

    name = "block"
    default_backend = SecondOrder

    def __init__(self, backend: Backend | None = None, name: str | None = None,
                 layers: list[str] | str | None = None) -> None:
        super().__init__(backend, name)
        if layers is None:
            raise ValueError("the block engine needs layers=[...] (layer names or module prefixes)")
        self.block = [layers] if isinstance(layers, str) else list(layers)

    def bind(self, layers, device, dtype):
        super().bind(layers, device, dtype)
        self.selected = select_layers(layers, self.block, "block")

    def run(self, batch: MetaBatch, generator: torch.Generator, fixed: set[str] | None) -> MetaResult:
        contrib = self.selected if fixed is None else fixed
        res = self.backend(batch, contrib)
        one = batch.one()
        res.gates = {i.name: one for i in batch.layers if i.name in contrib}
        return res


class RandomLayers(Engine):
    """``s`` layers drawn uniformly at random each step (Table 4's random layers).

    Args:
        s: how many layers contribute each step.
    """

    name = "random"
    default_backend = SecondOrder

    def __init__(self, backend: Backend | None = None, name: str | None = None, s: int = 4) -> None:
        super().__init__(backend, name)
        if s < 1:
            raise ValueError(f"random engine needs s >= 1, got {s}")
        self.s = s

    def run(self, batch: MetaBatch, generator: torch.Generator, fixed: set[str] | None) -> MetaResult:
        names = [i.name for i in batch.layers]
        contrib = fixed
        if contrib is None:
            idx = torch.randperm(len(names), generator=generator)[: self.s].tolist()
            contrib = {names[i] for i in idx}
        res = self.backend(batch, contrib)
        one = batch.one()
        res.gates = {n: one for n in names if n in contrib}
        return res


ENGINES.add("exact", over(AllLayers, SecondOrder, "exact"))
ENGINES.add("jvp", over(AllLayers, JVP, "jvp"))
ENGINES.add("fd", over(AllLayers, FD, "fd"))
ENGINES.add("block", over(Block, SecondOrder, "block"))
ENGINES.add("random", over(RandomLayers, SecondOrder, "random"))
