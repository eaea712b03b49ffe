"""How much memory a dataset may take: the bound every loader checks before it allocates.

The budget is half of the machine's physical memory, or less where less is left now: the memory
the kernel reports available (``MemAvailable``), a container's limit (cgroup ``memory.max`` less
``memory.current``) or the process's address-space limit (``ulimit -v``, less what it has mapped).
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30


@dataclass(frozen=True)
class Budget:
    """``bytes`` the data may take and ``why``: what sets that bound (for messages)."""

    bytes: int
    why: str


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
        bounds.append(Budget(phys // 2, f"half of this machine's {phys / GIB:.1f} GiB"))
    except (AttributeError, ValueError, OSError):
        pass
    avail = _read_int("/proc/meminfo", "MemAvailable")
    if avail is not None:
        bounds.append(Budget(avail, f"the {avail / GIB:.1f} GiB available now"))
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        bounds.append(Budget(max(0, limit - used), f"what is left of the container's {limit / GIB:.1f} GiB limit"))
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = _read_int("/proc/self/status", "VmSize")
    if soft != resource.RLIM_INFINITY and mapped is not None:
        bounds.append(Budget(max(0, soft - mapped), f"what is left of the process's {soft / GIB:.1f} GiB "
                                                    "address-space limit (ulimit -v)"))
    return min(bounds, key=lambda b: b.bytes) if bounds else None
