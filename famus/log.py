"""Messages through :mod:`logging`: the ``famus`` logger hierarchy, and the handler the commands install.

Every module logs to ``logging.getLogger(__name__)`` (``famus.train.loop``, ``famus.compare``, ...),
so ``logging.getLogger("famus")`` holds them all. The library adds no handler and never calls
``logging.basicConfig``: where the application configures nothing, Python's last-resort handler
shows warnings and errors on stderr and drops info messages. Configure logging as you like, or call
:func:`enable` for what the ``famus`` commands show: one line per message on stderr, info and above.

The ``famus`` commands install it (``--quiet``: warnings and errors only) for the duration of the
command, and show Python warnings (:func:`warnings.warn`) as one line each through it too.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

ROOT = "famus"


class OneLineFormatter(logging.Formatter):
    """``PREFIX: message`` (``PREFIX: warning: message`` for warnings and above), on one line."""

    def __init__(self, prefix: str = ROOT) -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return f"{self.prefix}: {level}" + " ".join(record.getMessage().split("\n"))


class StderrHandler(logging.Handler):
    """Writes to the ``sys.stderr`` of the moment through ``tqdm.write``, so a bar on a terminal stays below."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's contract: a failing handler reports and carries on
            self.handleError(record)


def enable(level: int = logging.INFO, prefix: str = ROOT) -> logging.Handler:
    """Show famus's messages of ``level`` and above on stderr, one line each (``PREFIX: ...``); returns
    the handler. Calling it again changes that handler, it adds no second one."""
    logger = logging.getLogger(ROOT)
    handler = next((h for h in logger.handlers if isinstance(h, StderrHandler)), None)
    if handler is None:
        handler = StderrHandler()
        logger.addHandler(handler)
    handler.setLevel(level)
    handler.setFormatter(OneLineFormatter(prefix))
    logger.setLevel(level)
    return handler


@contextmanager
def command_logging(prefix: str, quiet: bool = False) -> Iterator[None]:
    """For one ``famus`` command: :func:`enable` (warnings and up when ``quiet``), Python warnings as
    one line each through it; everything as it was afterwards."""
    logger = logging.getLogger(ROOT)
    before = next((h for h in logger.handlers if isinstance(h, StderrHandler)), None)
    saved = (logger.level, before.level, before.formatter) if before is not None else (logger.level, None, None)
    handler = enable(logging.WARNING if quiet else logging.INFO, prefix)
    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None) -> None:
        what = "" if category is UserWarning else f" ({category.__name__})"
        logger.warning("%s%s", message, what)

    warnings.showwarning = one_line
    try:
        yield
    finally:
        warnings.showwarning = show
        logger.setLevel(saved[0])
        if before is None:
            logger.removeHandler(handler)
        else:  # the application's own famus.log.enable(): as it was
            handler.setLevel(saved[1])
            handler.setFormatter(saved[2])
