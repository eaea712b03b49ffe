"""Reports on training runs: meta-gradient tracking during training, plots, HTML and Markdown after.

* :class:`Tracker` (``tracking.py``): the training loop's hook; writes ``tracking.jsonl``.
* :func:`make_report` (``report.py``): figures (``plots.py``), ``index.html`` (``html.py``),
  ``summary.md`` / ``summary.json`` (``summary.py``) for one or more run folders (``runs.py``).
* :func:`add_arguments`, :func:`run_cli` (``cli.py``): the ``famus report`` subcommand.

Names are imported on first use, so ``from famus.report import Tracker`` in the training
loop does not import matplotlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {
    "Tracker": "tracking",
    "RunningMoments": "tracking",
    "TRACKING_FILE": "tracking",
    "make_report": "report",
    "ReportError": "report",
    "Run": "runs",
    "load_run": "runs",
    "add_arguments": "cli",
    "run_cli": "cli",
}

__all__ = ["Tracker", "RunningMoments", "TRACKING_FILE", "make_report", "ReportError", "Run", "load_run",
           "add_arguments", "run_cli"]

if TYPE_CHECKING:
    from famus.report.cli import add_arguments, run_cli
    from famus.report.report import ReportError, make_report
    from famus.report.runs import Run, load_run
    from famus.report.tracking import TRACKING_FILE, RunningMoments, Tracker


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"famus.report.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'famus.report' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
