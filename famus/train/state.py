"""A run's checkpoint: what ``checkpoint.pt`` holds, and loading it back into the run's objects.

One format for every mode: ``nets`` lists each network's ``{"model", "optimizer", "learner",
"scaler"}`` (one in clean mode, two in pseudo mode); ``generator`` and ``torch_rng`` are the random
streams, ``source`` the batch source's own state (pseudo mode: the mixup's numpy stream),
``position`` how far a mid-epoch checkpoint's epoch got. Clean-mode checkpoints of famus before this
format (``model``, ``optimizer``, ``learner``, ``scaler`` at the top) still load; pseudo-mode ones
(``models``, ...) do not: start those runs again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from famus.train.batches import passes
from famus.train.checkpoint import CorruptFileError
from famus.train.nets import Net
from famus.train.position import EpochPosition


@dataclass
class Resumed:
    """Where a checkpoint leaves the run: finished epochs and steps, the best test accuracy so far,
    the training time so far and the position in the epoch under way (``None`` at an epoch's end)."""

    epoch: int = 0
    step: int = 0
    best: float | None = None
    elapsed: float = 0.0
    position: EpochPosition | None = None


def net_states(ck: dict[str, Any]) -> list[dict[str, Any]]:
    """The checkpoint's ``nets`` (or, from a clean-mode checkpoint of the old format, its one network)."""
    if "nets" in ck:
        return ck["nets"]
    if "models" in ck:
        raise ValueError("it is a pseudo-mode checkpoint of famus before one loop, which cannot be resumed; "
                         "start the run again")
    return [{key: ck[key] for key in ("model", "optimizer", "learner")} | {"scaler": ck.get("scaler")}]


def restore(ck: dict[str, Any], path: Path, nets: list[Net], gen: torch.Generator, source, n: int,
            iters: int, device: torch.device) -> Resumed:
    """Load ``ck`` into the networks, random streams and batch source; ``n`` training examples (trained on).

    Raises:
        CorruptFileError: the checkpoint does not fit the run (missing keys, wrong shapes).
    """
    try:
        for net, state in zip(nets, net_states(ck), strict=True):
            net.load_state_dict(state)
        gen.set_state(ck["generator"])
        torch.random.set_rng_state(ck["torch_rng"])
        source.load_state_dict(ck.get("source"))
        position = None
        if ck.get("position") is not None:
            position = EpochPosition.from_state(ck["position"], device)
            if not position.fits(passes(source), n, iters):
                raise ValueError("its mid-epoch position does not fit the training set")
        best = ck["best_test_acc"]
        return Resumed(int(ck["epoch"]), int(ck["step"]), None if best is None else float(best),
                       float(ck["elapsed_s"]), position)
    except (AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CorruptFileError(f"{path} does not fit this run ({type(e).__name__}: {first})") from None
