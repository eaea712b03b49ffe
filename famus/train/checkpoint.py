"""Checkpoints: written atomically with a SHA-256 sidecar, loaded safely (see :mod:`famus.verified`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from famus.atomic import atomic_write_bytes, atomic_write_text
from famus.verified import CorruptFileError, load_verified, save_verified

CHECKPOINT = "checkpoint.pt"  # the latest checkpoint in a run folder
BEST = "model_best.pt"  # the model of the best test accuracy so far
CHECKPOINT_SECONDS = 600.0  # with checkpoint_every unset: a mid-epoch checkpoint after this much time

__all__ = ["BEST", "CHECKPOINT", "CHECKPOINT_SECONDS", "CheckpointSchedule", "CorruptFileError", "atomic_write_bytes",
           "atomic_write_text", "load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` ``state`` atomically, with its checksum in ``path.sha256``.

    ``state`` must hold only tensors, numbers, strings, ``None`` and plain containers (what
    :func:`load_checkpoint` accepts); RNG states are uint8 tensors.
    """
    save_verified(path, state)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`: checksum verified, ``weights_only`` unpickling.

    Raises:
        CorruptFileError: the file is missing its checksum, fails it, cannot be loaded safely, or is
            not a checkpoint (a dict); the one-line message names the file.
    """
    state = load_verified(path)
    if not isinstance(state, dict):
        raise CorruptFileError(f"{path} is not a famus checkpoint (it holds a {type(state).__name__})")
    return state


class CheckpointSchedule:
    """When to write a mid-epoch checkpoint (epoch ends always get one).

    Args:
        every: every this many steps (global step count); ``None``: when ``seconds`` have passed
            since the last checkpoint (or the start).
        seconds: the time limit used when ``every`` is ``None``.
    """

    def __init__(self, every: int | None, seconds: float = CHECKPOINT_SECONDS) -> None:
        self.every, self.seconds = every, seconds
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        """Whether a checkpoint is due after ``step`` finished steps."""
        if self.every is not None:
            return step % self.every == 0
        return time.monotonic() - self.last >= self.seconds

    def written(self) -> None:
        """Note that a checkpoint was just written (restarts the clock)."""
        self.last = time.monotonic()
