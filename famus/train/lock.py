"""One process per run folder: an exclusive ``flock`` on ``RUN/.famus.lock`` for the whole run.

``famus train`` (rank 0 under torchrun) takes it before writing anything and releases it at the
end, whatever the outcome; a second ``famus train`` or ``--resume`` on the folder meanwhile is
refused, naming the holder (pid, host and start time, which the lock file holds). The lock is the
kernel's, tied to the open file: a holder that is killed releases it with its last breath, so a
lock file a SIGKILL left behind never blocks a resume. (On NFS, ``flock`` is emulated with
byte-range locks, which hold between machines as well.)

Releasing deletes the lock file while still holding it, and a process that takes the lock checks
that the file it locked is still the one at that path, so two processes never both hold one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".famus.lock"


class RunFolderLocked(ValueError):
    """Another process holds the run folder (one-line message naming it)."""


def _holder(fd: int) -> str:
    """Who holds the lock, from the lock file's contents, for the message."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {int(info['pid'])} on {str(info['host'])[:64]}, since {str(info['since'])[:32]}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "pid unknown: it is just starting"


class RunLock:
    """The lock of one run folder, held from :meth:`acquire` to :meth:`release`.

    Attributes:
        path: the lock file; created: the folders :meth:`acquire` made (removed again by :meth:`release`
            when they are still empty, so a run refused before its first write leaves nothing behind).
    """

    def __init__(self, path: Path, fd: int, created: list[Path]) -> None:
        self.path, self._fd, self.created = path, fd, created

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike[str]) -> RunLock:
        """Create ``run_dir`` (and its parents) if needed and take its lock, without waiting.

        Raises:
            RunFolderLocked: another process holds it.
            OSError: the folder or the lock file cannot be created.
        """
        run_dir = Path(run_dir)
        created = []
        probe = run_dir
        while not probe.exists() and probe != probe.parent:
            created.append(probe)
            probe = probe.parent
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_FILE
        while True:
            # O_NOFOLLOW: a symlink planted at the lock's name is refused, never followed and truncated
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                _remove_empty(created)
                raise RunFolderLocked(f"--out {str(run_dir)!r} is in use by another famus process ({holder}); wait "
                                      "for it to end, or choose another --out") from None
            except OSError as e:  # e.g. a file system without locks
                os.close(fd)
                _remove_empty(created)
                raise OSError(e.errno, f"cannot lock --out {str(run_dir)!r} ({e.strerror}); famus locks its run "
                                       "folder (flock): choose an --out on a local or NFS file system") from None
            except BaseException:
                os.close(fd)
                raise
            try:  # the holder may have released (and deleted) the file between our open and flock
                now = os.stat(path, follow_symlinks=False)
                mine = os.fstat(fd)
                if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        return cls(path, fd, created)

    def release(self) -> None:
        """Delete the lock file (still holding the lock), then let go; remove the folders :meth:`acquire` created
        if nothing was written in them. Safe to call twice."""
        if self._fd < 0:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = -1
        _remove_empty(self.created)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _remove_empty(folders: list[Path]) -> None:
    """``rmdir`` each folder (deepest first) while it is empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
