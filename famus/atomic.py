"""Atomic file writes: a crash mid-write never leaves a broken file behind.

The data goes to a temporary file beside the target (same folder, so the same file system), is
flushed and ``fsync``-ed, then ``os.replace``-d into place: readers see the old file or the whole
new one. The temporary file is created like ``open(path, "xb")``, so the final file's permissions
come from the umask, as for any file ``open`` creates.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None],
                 before_replace: Callable[[], None] | None = None) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then ``os.replace`` it into place.

    ``before_replace`` runs between the two (e.g. a checksum sidecar that must list the new file's digest
    before the new file can be seen).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode())

