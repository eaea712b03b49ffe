"""Torch files that cannot run code and whose bytes are checked: checkpoints, ``model_best.pt``, splits.

Each file ``NAME.pt`` gets a sidecar ``NAME.pt.sha256`` in ``sha256sum`` format (``<hex>  NAME.pt``;
``sha256sum -c NAME.pt.sha256`` checks it by hand). Loading reads the file once, checks its
SHA-256 against the sidecar, and only then unpickles it with ``torch.load(weights_only=True)``,
which builds nothing but tensors, numbers, strings and plain containers: a file with any other
object is refused, and no code in it runs.

A save survives a kill at any moment: the new file is written beside the old one, the sidecar
is replaced by one listing the new digest *and* the old ones, the new file is renamed over the
old, and the sidecar is replaced by one listing only the new digest. Whichever of the two files
a kill leaves at ``NAME.pt``, the sidecar lists it. A kill leaves at most a temporary
``.NAME.pt.*.tmp`` behind, which :func:`remove_stale_temporaries` deletes at the next start.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

from famus.atomic import atomic_write, atomic_write_text

SUFFIX = ".sha256"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
# Tests only: seconds to sleep inside each save (before and after the sidecar is replaced), to
# widen the window in which a fault-injection test kills the process mid-write.
PAUSE_ENV = "FAMUS_TEST_WRITE_PAUSE"


class CorruptFileError(ValueError):
    """A famus file is missing its checksum, fails it, or cannot be loaded safely (one-line message)."""


def checksum_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar of ``path``: ``NAME.pt`` -> ``NAME.pt.sha256``."""
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def _pause() -> None:
    seconds = os.environ.get(PAUSE_ENV)
    if seconds:
        time.sleep(float(seconds))


def _digests(sidecar: Path) -> list[str]:
    """The digests a sidecar lists (well-formed lines only; none if it is missing)."""
    if not sidecar.is_file():
        return []
    lines = sidecar.read_text(errors="replace").splitlines()
    return [m.group(1) for m in map(_LINE.match, lines) if m]


def _sidecar_text(digests: list[str], name: str) -> str:
    return "".join(f"{d}  {name}\n" for d in dict.fromkeys(digests))


def save_verified(path: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically, with its SHA-256 in ``path.sha256`` (see the module)."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    digest = hashlib.sha256(data).hexdigest()
    sidecar = checksum_path(path)

    def list_both() -> None:  # the old file and the new pass until the replace
        _pause()
        old = _digests(sidecar) if path.exists() else []
        atomic_write_text(sidecar, _sidecar_text([digest, *old], path.name))
        _pause()

    atomic_write(path, lambda f: f.write(data), before_replace=list_both)
    atomic_write_text(sidecar, _sidecar_text([digest], path.name))


def read_verified(path: str | os.PathLike[str], required: bool = True) -> bytes:
    """The bytes of ``path``, checked against its sidecar.

    Args:
        path: the file.
        required: a missing sidecar is an error (``False``: files from elsewhere, checked when it exists).

    Raises:
        CorruptFileError: the file or its sidecar is missing, or the digest does not match.
    """
    path = Path(path)
    sidecar = checksum_path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorruptFileError(f"cannot read {path}: {e.strerror or e}") from None
    if not sidecar.exists() and not required:
        return data
    digests = _digests(sidecar)
    if not digests:
        raise CorruptFileError(f"{path} has no checksum ({sidecar.name} is missing or empty); famus does not load "
                               "unchecked files: it was not written by famus, or only partly copied")
    if hashlib.sha256(data).hexdigest() not in digests:
        raise CorruptFileError(f"{path} does not match its checksum in {sidecar.name}: the file is damaged or was "
                               "changed; restore it from a copy, or start the run anew")
    return data


def load_verified(path: str | os.PathLike[str], required: bool = True) -> Any:
    """Load a file written by :func:`save_verified`: the checksum, then ``torch.load(weights_only=True)``.

    Raises:
        CorruptFileError: missing, damaged or changed, or it holds anything but tensors, numbers,
            strings and plain containers (the message names the file; no code in the file runs).
    """
    data = read_verified(path, required)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CorruptFileError(f"cannot load {path} safely ({type(e).__name__}: {first}); famus loads only "
                               "tensors, numbers, strings and plain containers") from None


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files an interrupted atomic write left in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary file of an atomic write (``.NAME.*.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")
