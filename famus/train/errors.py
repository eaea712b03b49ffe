"""Why training stops: :class:`TrainingError`, and the NaN check that raises it."""

from __future__ import annotations

import torch


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


def check_finite(bad: torch.Tensor, out: str, epoch: int, step: int) -> None:
    """Stop (keeping the last good checkpoint in ``out``) if a loss since the last check was NaN or inf.

    ``bad`` is a 0-d bool device flag, or-ed every step; reading it is the one host sync, done only
    at log, checkpoint and epoch boundaries.
    """
    if bool(bad):
        raise TrainingError(f"the training loss became NaN or inf at epoch {epoch + 1}, step {step} or before; "
                            f"stopped. The last good checkpoint is kept in {out}; try a lower --lr")
