"""Reports on training runs: plots, HTML and Markdown, after training.

* :func:`make_report` (``report.py``): figures (``plots.py``), ``index.html`` (``html.py``),
  ``summary.md`` / ``summary.json`` (``summary.py``) for one or more run folders (``runs.py``).
* :func:`add_arguments`, :func:`run_cli` (``cli.py``): the ``famus report`` subcommand.

What a run records for them during training lives in :mod:`famus.train` (``tracking.jsonl``:
:class:`famus.train.tracking.Tracker`), so training never imports the report. Names are imported on
first use, so ``import famus.report`` does not import matplotlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {
    "make_report": "report",
    "ReportError": "report",
    "Run": "runs",
    "load_run": "runs",
    "add_arguments": "cli",
    "run_cli": "cli",
}

__all__ = ["make_report", "ReportError", "Run", "load_run",
           "add_arguments", "run_cli"]

if TYPE_CHECKING:
    from famus.report.cli import add_arguments, run_cli
    from famus.report.report import ReportError, make_report
    from famus.report.runs import Run, load_run


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"famus.report.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'famus.report' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
