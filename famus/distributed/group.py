"""The process group: who this rank is, where it trains, and setting the group up and tearing it down.

Every query here answers as for one process (world size 1, rank 0) when no process group is
initialized, so code that asks them runs unchanged without ``torch.distributed``.
"""

from __future__ import annotations

import datetime
import gc
import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialized (collectives are needed)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the one that writes files, logs and shows progress."""
    return rank() == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` set by the launcher (torchrun), 1 when absent."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """``LOCAL_RANK`` set by the launcher: the process's index on its machine (its GPU)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def backend_for(device: torch.device | str) -> str:
    """``nccl`` for CUDA devices, ``gloo`` for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def comm_device() -> torch.device | None:
    """Where collectives run: the current GPU for ``nccl``, else ``None`` (wherever the tensor is)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def rank_device(name: str) -> str:
    """The device this rank trains on: ``cuda`` / ``auto`` become ``cuda:LOCAL_RANK`` under a launcher.

    In a group the caller initialized without a launcher, ``cuda`` stays the current device (set
    it with ``torch.cuda.set_device`` on each rank, as for any NCCL program).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and env_world_size() > 1:
        return f"cuda:{local_rank()}"
    return name


@contextmanager
def process_group(device: torch.device | str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[bool]:
    """Initialize the default process group from the launcher's environment when it is needed.

    Nothing happens when a group is already initialized (the caller owns it) or ``WORLD_SIZE`` is
    absent or 1. Otherwise the group is created (``nccl`` on CUDA, ``gloo`` on CPU) with a
    ``timeout_s`` timeout on collectives, so that a rank waiting for a peer that died gives up
    instead of hanging. It is destroyed when the block ends; on an exception it is left without
    waiting for the other ranks (:func:`abandon`): their collectives then fail, and the launcher
    stops the job.

    Yields:
        Whether this call created the group.
    """
    if (dist.is_available() and dist.is_initialized()) or env_world_size() <= 1:
        yield False
        return
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {}
    if device.type == "cuda" and "device_id" in inspect.signature(dist.init_process_group).parameters:
        kwargs["device_id"] = device  # torch >= 2.3: bind the group to this rank's GPU now
    dist.init_process_group(backend_for(device), timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    try:
        yield True
    except BaseException:
        abandon()
        raise
    dist.destroy_process_group()
    gc.collect()  # what still holds the group's store or threads goes now, not in the interpreter's teardown


def abandon() -> None:
    """Leave the default process group after an error, without waiting for the other ranks.

    ``destroy_process_group`` on NCCL flushes pending collectives first, which never finish when a
    peer is gone; NCCL communicators are aborted instead (``ncclCommAbort``, through torch's
    ``_abort_process_group``). Gloo's destroy closes the connections at once, so the peers' pending
    collectives fail right away. Errors while leaving are ignored: the original error matters.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if dist.get_backend() == "nccl" and abort is not None:
            abort()
        else:
            dist.destroy_process_group()
    except Exception:  # already failing: keep the first error
        pass
