"""Why training stops: :class:`TrainingError`, and the NaN check that raises it."""

from __future__ import annotations

from pathlib import Path

import torch

from famus.train.checkpoint import CHECKPOINT


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint, if any, is kept."""


def check_finite(bad: torch.Tensor, out: str, epoch: int, step: int) -> None:
    """Stop (keeping the last good checkpoint in ``out``, where there is one) if a loss since the last check was
    NaN or inf.

    ``bad`` is a 0-d bool device flag, or-ed every step; reading it is the one host sync, done only
    at log, checkpoint and epoch boundaries.
    """
    if bool(bad):
        path = Path(out) / CHECKPOINT
        kept = (f"The last good checkpoint is kept in {path}" if path.is_file() else
                "No checkpoint was written before it")
        raise TrainingError(f"the training loss became NaN or inf at epoch {epoch + 1}, step {step} or before; "
                            f"stopped. {kept}; try a lower --lr")
