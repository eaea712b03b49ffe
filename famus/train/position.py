"""How far an epoch got: saved in mid-epoch checkpoints, so a resumed epoch ends as an uninterrupted one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def _zero(device, shape=()) -> Tensor:
    return torch.zeros(shape, device=device, dtype=torch.float64)


@dataclass
class EpochPosition:
    """Which pass is under way (``k``: network ``k``'s, or a joint source's one pass), its finished iterations
    and batch order, and the epoch's metric sums.

    ``epoch_state`` is the batch source's per-epoch state (pseudo mode: the GMM splits).
    """

    k: int  # the pass under way
    it: int  # its finished iterations
    perm: Tensor | None  # its pass's batch order (sources that shuffle)
    loss_sum: Tensor  # (passes,) float64 sums of the sampled losses, per pass
    meta_sum: Tensor  # float64 sums over the steps with a meta update
    clean_mass: Tensor
    bad: Tensor  # a NaN or inf loss not yet reported
    skipped: Tensor  # meta steps skipped for a non-finite meta gradient
    meta_steps: int = 0  # steps that updated the meta parameters (meta_every, meta_warmup)
    weighted: int = 0  # steps whose example weights went into clean_mass
    stage: dict[str, float] = field(default_factory=dict)  # stage times (s)
    gates: dict[str, Tensor] = field(default_factory=dict)  # FaMUS gate counts
    time_s: float = 0.0  # training time of the epoch so far
    quality: dict[str, Any] | None = None  # the weight-quality meter's sums (QualityMeter.state_dict)
    windows: list[dict[str, Any]] = field(default_factory=list)  # the epoch's weight-quality log windows
    epoch_state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, nets: int, device: torch.device, epoch_state: dict[str, Any]) -> EpochPosition:
        """A new epoch of ``nets`` passes."""
        return cls(0, 0, None, _zero(device, (nets,)), _zero(device), _zero(device),
                   torch.zeros((), device=device, dtype=torch.bool), _zero(device), epoch_state=epoch_state)

    def next_network(self, k: int) -> None:
        """Start pass ``k`` (keeps the position if it is already there)."""
        if k != self.k:
            self.k, self.it, self.perm = k, 0, None

    def state_dict(self) -> dict[str, Any]:
        """Tensors, numbers and plain containers (a checkpoint's ``position``)."""
        return {"net": self.k, "iteration": self.it, "perm": None if self.perm is None else self.perm.cpu(),
                "loss_sum": self.loss_sum.cpu(), "meta_sum": self.meta_sum.cpu(), "clean_mass": self.clean_mass.cpu(),
                "bad": self.bad.cpu(), "skipped": self.skipped.cpu(), "meta_steps": self.meta_steps,
                "weighted": self.weighted, "stage": dict(self.stage),
                "gates": {k: v.cpu() for k, v in self.gates.items()}, "time_s": self.time_s,
                "quality": self.quality, "windows": list(self.windows), "epoch_state": self.epoch_state}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str) -> EpochPosition:
        """The position saved by :meth:`state_dict`, its tensors on ``device``.

        A clean-mode position of famus before one loop (no ``net``, a 0-d ``loss_sum``) loads too.
        """
        t = {k: state[k].to(device) for k in ("loss_sum", "meta_sum", "clean_mass", "bad", "skipped")}
        perm = state["perm"]
        it = int(state["iteration"])
        return cls(int(state.get("net", 0)), it, None if perm is None else perm.to(device),
                   t["loss_sum"].reshape(-1), t["meta_sum"], t["clean_mass"], t["bad"], t["skipped"],
                   int(state["meta_steps"]), int(state.get("weighted", it)), dict(state["stage"]),
                   {k: v.to(device) for k, v in state["gates"].items()}, float(state["time_s"]),
                   state.get("quality"), list(state.get("windows", [])), dict(state.get("epoch_state") or {}))

    def fits(self, nets: int, n: int, iters: int) -> bool:
        """Whether the position fits a run of ``nets`` passes, ``n`` training examples, ``iters`` per pass."""
        return (0 <= self.k < nets and 0 <= self.it <= iters and self.loss_sum.shape == (nets,)
                and (self.perm is None or self.perm.shape == (n,)))
