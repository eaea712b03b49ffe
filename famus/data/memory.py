"""How much memory a dataset may take: the bound every loader checks before it allocates.

The budget is half of the machine's physical memory, or less where less is left now: the memory
the kernel reports available (``MemAvailable``), a container's limit (cgroup ``memory.max`` less
``memory.current``) or the process's address-space limit (``ulimit -v``, less what it has mapped).
Under an address-space limit every thread counts too (its stack and malloc arena are reserved address
space), so loaders start fewer threads there (:attr:`Budget.per_thread`).
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
# address space a new thread reserves: its stack (8 MiB by default) and a glibc malloc arena (64 MiB)
THREAD_ADDRESS_SPACE = 72 * 2**20


@dataclass(frozen=True)
class Budget:
    """``bytes`` the data may take, ``why`` (what sets that bound, for messages), and ``per_thread``: what each
    extra thread costs of it (only under an address-space limit; elsewhere reserved address space is free)."""

    bytes: int
    why: str
    per_thread: int = 0

    def threads(self, workers: int, each: int = 0) -> int:
        """How many of ``workers`` threads fit when each also holds ``each`` bytes (at least 1)."""
        cost = each + self.per_thread
        return max(1, min(workers, self.bytes // cost)) if cost else max(1, workers)


def size_text(n: int) -> str:
    """``n`` bytes for a message: ``1.5 GiB``, or ``300 MiB`` below 1 GiB."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"


def _read_int(path: str, key: str | None = None) -> int | None:
    """An integer file (``key=None``), or the ``key:`` line of a ``/proc`` table (kB), in bytes; None if absent."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    if key is None:
        text = text.strip()
        return int(text) if text.isdigit() else None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) > 1 and parts[1].isdigit() else None
    return None


def memory_budget() -> Budget | None:
    """The bytes a dataset may take (see the module docstring); None where nothing can be measured."""
    bounds: list[Budget] = []
    try:
        phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        bounds.append(Budget(phys // 2, f"half of this machine's {size_text(phys)}"))
    except (AttributeError, ValueError, OSError):
        pass
    avail = _read_int("/proc/meminfo", "MemAvailable")
    if avail is not None:
        bounds.append(Budget(avail, f"the {size_text(avail)} available now"))
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        bounds.append(Budget(max(0, limit - used), f"what is left of the container's {size_text(limit)} limit"))
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = _read_int("/proc/self/status", "VmSize")
    if soft != resource.RLIM_INFINITY and mapped is not None:
        bounds.append(Budget(max(0, soft - mapped), f"what is left of the process's {size_text(soft)} "
                                                    "address-space limit (ulimit -v)", THREAD_ADDRESS_SPACE))
    return min(bounds, key=lambda b: b.bytes) if bounds else None
