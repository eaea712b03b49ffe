"""``auto``: the exact meta gradient by whichever of ``exact`` and ``fd`` is faster on this model and machine.

``exact`` (second-order backprop) and ``fd`` (one extra forward pass, :mod:`.directional`) compute the
same meta gradient (to ``fd``'s finite-difference error, about 1e-6 relative), at costs that depend
on the model: on an MLP the double backward is cheap and ``exact`` is the faster (``famus bench``: fd
at 0.90x of exact's speed), on convolutional networks with BatchNorm ``fd`` is (ResNet-32: 1.75x).
Rather than guess from the architecture, ``auto`` times both on the first meta step's own batch
(``trials`` interleaved timings each after one warm-up call, median) and keeps the faster for the
rest of the run. The trial calls change nothing: they run on copies of the BatchNorm buffers, without
the Actual-Train reuse graph, under a forked random state. The choice is the engine's state
(``state_dict``), so ``--resume`` continues with it; in a process group rank 0's choice is imposed.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from famus import distributed as dist
from famus.meta.engines.base import ENGINES, Backend, Engine, MetaBatch, MetaResult
from famus.meta.engines.directional import FD
from famus.meta.engines.second_order import SecondOrder

CANDIDATES = ("exact", "fd")


class Auto(Engine):
    """Every layer contributes; the backend is ``exact``'s or ``fd``'s, whichever the first step timed faster.

    Args:
        fd_eps, scheme, stages: ``fd``'s options (:class:`~famus.meta.engines.directional.FD`).
        trials: timed calls of each backend on the first meta step (after one warm-up call each).
        choice: ``"exact"`` or ``"fd"`` to skip the timing (``None``: time them).
    """

    name = "auto"

    def __init__(self, fd_eps: float | None = None, scheme: str = "forward", stages: str | list[str] | None = "auto",
                 trials: int = 2, choice: str | None = None) -> None:
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise ValueError(f"trials must be an int >= 1, got {trials!r}")
        if choice is not None and choice not in CANDIDATES:
            raise ValueError(f"choice must be one of {', '.join(CANDIDATES)} or null, got {choice!r}")
        self.candidates: dict[str, Backend] = {"exact": SecondOrder(), "fd": FD(fd_eps, scheme, stages)}
        self.trials = trials
        self.choice: str | None = None
        self.timings: dict[str, float] = {}  # median seconds per call of each candidate on the first step
        super().__init__(self.candidates["fd"], "auto")
        if choice is not None:
            self._choose(choice)

    def _choose(self, name: str) -> None:
        self.choice = name
        self.backend = self.candidates[name]

    def _time(self, batch: MetaBatch) -> dict[str, float]:
        """Median wall time of each candidate on ``batch``, interleaved, changing no state."""
        cuda = batch.device.type == "cuda"
        devices = [batch.device.index or 0] if cuda else []
        runs: dict[str, list[float]] = {name: [] for name in CANDIDATES}
        with torch.random.fork_rng(devices=devices):
            for rep in range(self.trials + 1):  # the first round warms up (allocations, kernels, stage caches)
                for name in CANDIDATES:
                    trial = dataclasses.replace(batch, buffers={n: b.clone() for n, b in batch.buffers.items()},
                                                keep_virtual=False)
                    if cuda:
                        torch.cuda.synchronize(batch.device)
                    t0 = time.perf_counter()
                    self.candidates[name](trial, None)
                    if cuda:
                        torch.cuda.synchronize(batch.device)
                    if rep:
                        runs[name].append(time.perf_counter() - t0)
        return {name: statistics.median(ts) for name, ts in runs.items()}

    def run(self, batch: MetaBatch, generator: torch.Generator, fixed: set[str] | None) -> MetaResult:
        if self.choice is None:
            self.timings = self._time(batch)
            self._choose(dist.broadcast_object(min(self.timings, key=self.timings.get)))
        return self.backend(batch, fixed)

    def state_dict(self) -> dict:
        """The choice (not its timings, which differ from run to run): ``{}`` before the first step."""
        return {"choice": self.choice} if self.choice is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if state.get("choice") is not None:
            self._choose(state["choice"])


ENGINES.add("auto", Auto)
