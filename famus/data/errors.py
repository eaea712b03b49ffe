"""The one exception type of :mod:`famus.data`, and how its messages show names from the data."""

from __future__ import annotations

import os
import stat

SHOWN_CHARS = 100  # at most this much of a file name or label from the data goes into a message


class DataError(Exception):
    """A dataset, label file or image is missing, corrupt or refused.

    Messages are one line and name both the cause and the fix, e.g.
    ``"fashion-mnist: train-images-idx3-ubyte(.gz) not found in /x; install it with
    `apt-get install dataset-fashion-mnist` or pass --data-dir DIR"``. Programming errors
    (bad rates, wrong shapes) raise :class:`ValueError` instead.
    """


def shown(text: object, limit: int = SHOWN_CHARS) -> str:
    """``text`` for a one-line message: bytes that are not UTF-8 (file names, ``surrogateescape``) as ``\\xNN``,
    control characters escaped, and at most ``limit`` characters (the middle cut out: ``abc...xyz``)."""
    s = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    s = s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    s = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in s)
    if len(s) > limit:
        half = (limit - 3) // 2
        s = f"{s[:half]}...{s[len(s) - half:]}"
    return s


def is_utf8(text: str) -> bool:
    """Whether ``text`` (e.g. a file name decoded with ``surrogateescape``) is valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_regular_file(path: str | os.PathLike[str], what: str, fix: str, where: str = "") -> None:
    """Refuse, in one line, a ``path`` that is missing or is not a regular file (a device such as ``/dev/zero``,
    a FIFO, a folder). Only ``stat`` is called: a FIFO is never opened, so nothing blocks.

    Args:
        what: what the file is, e.g. ``"image list"``; fix: what to do when it is missing;
        where: after the name, e.g. ``" (line 3 of a.txt)"``.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{what} {shown(path)}{where} not found; {fix}") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        raise DataError(f"cannot read {what} {shown(path)}{where} ({getattr(e, 'strerror', None) or e}); "
                        f"{fix}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket or other special file"
        raise DataError(f"{what} {shown(path)}{where} is not a regular file ({kind}); give a file")
