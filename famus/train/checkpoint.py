"""Checkpoints, written atomically (see :mod:`famus.atomic`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from famus.atomic import atomic_torch_save, atomic_write_bytes, atomic_write_text

CHECKPOINT = "checkpoint.pt"  # the latest checkpoint in a run folder

__all__ = ["CHECKPOINT", "atomic_write_bytes", "atomic_write_text", "load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` ``state`` atomically."""
    atomic_torch_save(path, state)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (our own files: full unpickling)."""
    return torch.load(path, map_location="cpu", weights_only=False)
