"""Training progress: a tqdm bar on a terminal, one plain line per log window anywhere else.

A bar redraws itself many times a second; written into a file or a pipe (a batch job's log, ``2>
train.log``, a CI console) every redraw stays as a line fragment. Where stderr is not a terminal,
:func:`progress` returns a :class:`LineProgress` instead: the same interface (``n``, ``update``,
``set_postfix``, ``write``, ``close``, what the training loop uses), one plain line per
``set_postfix`` call, i.e. one per log window and one per epoch end.

Progress is not a log message: it goes straight to stderr (as tqdm does), switched by the config's
``progress`` (``--no-progress``, ``--quiet``), whether or not :mod:`logging` is configured.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Protocol, TextIO

from tqdm import tqdm


class Progress(Protocol):
    """What the training loop needs of a progress display (a subset of tqdm's interface)."""

    n: int

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> Any: ...

    def write(self, s: str) -> None: ...

    def close(self) -> None: ...


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (``False`` for files, pipes, captured streams)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


def _clock(seconds: float) -> str:
    """``75`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class LineProgress:
    """tqdm's interface as plain lines: nothing is printed on ``update``, one line on ``set_postfix``.

    Args:
        total: steps in the whole run.
        initial: steps already done (a resumed run).
        desc: what runs (``"mwnet/fd"``), the line's start.
        per_epoch: steps per epoch (all networks), to print the epoch; ``None``: no epoch.
        file: where the lines go; ``None``: ``sys.stderr`` at the time of writing (as tqdm).
        enabled: ``False`` prints nothing (``n`` still counts).

    A line reads ``mwnet/fd: epoch 2/10, step 140/875 (16%), 12.3 it/s, ETA 0:59, loss=0.5790, lr=0.1``.
    """

    def __init__(self, total: int, initial: int = 0, desc: str = "", per_epoch: int | None = None,
                 file: TextIO | None = None, enabled: bool = True) -> None:
        self.total, self.n, self.desc, self.per_epoch = total, initial, desc, per_epoch
        self.file, self.enabled = file, enabled
        self._start_n, self._t0 = initial, time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n

    def line(self, postfix: dict[str, Any]) -> str:
        """The line for the current step and ``postfix``."""
        parts = []
        if self.per_epoch:
            epochs = math.ceil(self.total / self.per_epoch)
            parts.append(f"epoch {max(1, math.ceil(self.n / self.per_epoch))}/{epochs}")
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        parts.append(f"step {self.n}/{self.total}{pct}")
        elapsed, done = time.perf_counter() - self._t0, self.n - self._start_n
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.3g} it/s")
            if self.total > self.n:
                parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        parts += [f"{k}={v}" for k, v in postfix.items()]
        return f"{self.desc}: " * bool(self.desc) + ", ".join(parts)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.write(self.line({**(ordered_dict or {}), **kwargs}))

    def write(self, s: str) -> None:
        if self.enabled:
            print(s, file=self.file or sys.stderr, flush=True)

    def close(self) -> None:
        pass


def progress(total: int, initial: int = 0, desc: str = "", per_epoch: int | None = None,
             enabled: bool = True) -> Progress:
    """A tqdm bar when stderr is a terminal, else a :class:`LineProgress` (see the module docstring)."""
    if enabled and is_terminal(sys.stderr):
        return tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True)
    return LineProgress(total, initial, desc, per_epoch, enabled=enabled)
