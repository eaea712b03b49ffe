"""The report's figure basics: :class:`Plot`, headless figures (matplotlib's Agg backend, no pyplot, no display),
PNG rendering, run colours and small helpers shared by the ``plot_*`` modules."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from famus.report.runs import num

DPI = 110


@dataclass
class Plot:
    """One figure of the report.

    Attributes:
        figure: the matplotlib figure (Agg canvas attached).
        title: a short title for the page.
        caption: what it shows (one or two sentences).
        left_out: one line per run or part left out, and why.
    """

    figure: Figure
    title: str
    caption: str
    left_out: list[str] = field(default_factory=list)


def new_figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas (headless, independent of pyplot's global state)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def run_color(i: int) -> str:
    """The colour of the ``i``-th run, the same in every figure."""
    return f"C{i % 10}"


def series(records: list[dict[str, Any]], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(num(r, x), num(r, y)) for r in records]
    pts = [(a, b) for a, b in pts if a is not None and b is not None]
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", **kw)


_series, _legend = series, legend  # the names the plot modules have used
