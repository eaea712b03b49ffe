"""Collectives that make ranks agree: broadcasts of tensors, objects and random streams, and errors.

Reductions of per-rank quantities to the union batch's are in :mod:`famus.distributed.union`.
Every function here is the identity (no collective) without a process group.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from famus.distributed.group import comm_device, is_distributed, world_size


def broadcast_(tensors: Iterable[Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (no-op without a process group)."""
    if not is_distributed():
        return
    dev = comm_device()
    with torch.no_grad():
        for t in tensors:
            if dev is not None and t.device != dev:
                moved = t.to(dev)
                dist.broadcast(moved, src=src)
                t.copy_(moved.to(t.device))
            else:
                dist.broadcast(t.data, src=src)


def same_on_all_ranks(t: Tensor, src: int = 0) -> Tensor:
    """``t`` with rank ``src``'s value on every rank, keeping this rank's gradient path.

    For decisions (FaMUS's hard gates) that must be identical everywhere: the graph's shape depends
    on them, so ranks that disagreed would wait in different collectives.
    """
    if not is_distributed():
        return t
    value = t.detach().clone()
    broadcast_([value], src)
    return value + (t - t.detach())


def sync_generator_(generator: torch.Generator, src: int = 0) -> None:
    """Give ``generator`` rank ``src``'s state, so every rank draws the same random stream."""
    if not is_distributed():
        return
    state = generator.get_state()
    broadcast_([state], src)
    generator.set_state(state)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled); ``obj`` itself without a process group."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@contextmanager
def agree_on_errors() -> Iterator[None]:
    """Run a block on every rank; when it raises on any rank, raise on every rank.

    For set-up code (checks, loading data): a rank that failed alone would leave the others
    waiting in the next collective. Without a process group this is a plain block.
    """
    if not is_distributed():
        yield
        return
    err: BaseException | None = None
    try:
        yield
    except Exception as e:  # re-raised below, on every rank
        err = e
    msgs: list[str | None] = [None] * world_size()
    dist.all_gather_object(msgs, None if err is None else f"{type(err).__name__}: {err}")
    if err is not None:
        raise err
    failed = [(r, m) for r, m in enumerate(msgs) if m is not None]
    if failed:
        r, m = failed[0]
        raise RuntimeError(f"rank {r} failed: {m}")
