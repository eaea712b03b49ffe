"""``make_report``: figures, ``summary.md``, ``summary.json`` and ``index.html`` for run folders.

Missing run folders and missing or partial files are reported (in the page, in
``summary.md`` and through ``warn``, stderr by default), the affected figures are
skipped, and the rest is written. Only when none of the given folders exists is it an
error (:class:`ReportError`). Everything is rendered in memory first; files are written
afterwards, each atomically, ``index.html`` last.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from famus.atomic import atomic_write_bytes, atomic_write_text
from famus.report.classes import plot_classes
from famus.report.curves import plot_accuracy, plot_losses
from famus.report.figure import Plot, to_png
from famus.report.health import health_html, plot_health
from famus.report.html import PageFigure, page
from famus.report.plots import plot_layers, plot_meta_gradient, plot_stage_times, plot_weights
from famus.report.quality import plot_v_curves, plot_weight_quality
from famus.report.runs import RUN_FILES, Run, load_run, unique_names
from famus.report.split import plot_split
from famus.report.summary import markdown, summarize
from famus.report.suspects import load_scores, plot_scores, suspects_html

MAX_WARNINGS = 20  # lines famus report prints about missing or partial data; the rest are counted


class ReportError(ValueError):
    """No report can be made (e.g. none of the run folders exists)."""


def _stderr(msg: str) -> None:
    print(f"famus report: {msg}", file=sys.stderr)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "run"


def make_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    weight_steps: list[int] | None = None,
    warn: Callable[[str], None] | None = _stderr,
) -> dict[str, Any]:
    """Write a report on ``run_dirs`` into ``out_dir``.

    Args:
        run_dirs: run folders (``famus train --out``), drawn in this order.
        out_dir: where the report goes (created if needed; files of the same names are replaced).
        weight_steps: training steps for the weight histograms (each maps to the nearest
            tracked step); default: the first, middle and last tracked steps.
        warn: called with one line per problem (default: print to stderr); ``None`` is silent.

    Returns:
        ``{"out_dir", "index", "summary_md", "summary_json", "figures": [paths],
        "runs": [summary rows], "problems": {run name or "report": [messages]}, "skipped": [...]}``.

    Raises:
        ReportError: no run folders given, or none of them exists.
    """
    if not run_dirs:
        raise ReportError("no run folders given")
    runs = [load_run(p) for p in run_dirs]
    unique_names(runs)
    for r in runs:
        if r.exists and not r.is_run:
            r.problems.insert(0, f"not a famus run folder (none of {', '.join(RUN_FILES)})")
    if not any(r.is_run for r in runs):
        raise ReportError("no run folder found: " + "; ".join(f"{r.path}: {r.problems[0]}" for r in runs))

    problems: dict[str, list[str]] = {r.name: list(r.problems) for r in runs if r.problems}
    rendered, skipped = _figures(runs, weight_steps, problems)
    rows = [summarize(r) for r in runs if r.exists]
    names = [f.filename for f in rendered]
    md = markdown(rows, problems, names)
    summary = {"runs": rows, "problems": problems, "skipped": skipped, "figures": names}
    js = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    html = page(rows, problems, rendered, skipped, sections=health_html([r for r in runs if r.exists]))

    out = _write(Path(out_dir), rendered, {"summary.json": js, "summary.md": md, "index.html": html})
    if warn is not None:
        lines = [f"{name}: {m}" if name == "report" else f"{_path_of(runs, name)}: {m}"
                 for name, msgs in problems.items() for m in msgs] + [f"not drawn: {s}" for s in skipped]
        for line in lines[:MAX_WARNINGS]:
            warn(line)
        if len(lines) > MAX_WARNINGS:
            warn(f"and {len(lines) - MAX_WARNINGS} more (all in {out / 'summary.md'})")
    return {
        "out_dir": str(out),
        "index": str(out / "index.html"),
        "summary_md": str(out / "summary.md"),
        "summary_json": str(out / "summary.json"),
        "figures": [str(out / n) for n in names],
        "runs": rows,
        "problems": problems,
        "skipped": skipped,
    }


def _figures(runs: list[Run], weight_steps: list[int] | None, problems: dict[str, list[str]]
             ) -> tuple[list[PageFigure], list[str]]:
    """Every figure the runs allow, and why each left-out one is missing; drawing errors go to ``problems``."""
    rendered: list[PageFigure] = []
    skipped: list[str] = []

    def add(filename: str, make: Callable[[], Plot | None], what: str, why_none: str | None,
            after: Callable[[], str] | None = None) -> None:
        try:
            plot = make()
            if plot is None:
                if why_none is not None:
                    skipped.append(f"{what}: {why_none}")
                return
            png = to_png(plot.figure)
            html = after() if after is not None else ""
        except Exception as e:  # one broken figure must not cost the whole report
            problems.setdefault("report", []).append(f"could not draw {what}: {type(e).__name__}: {str(e)[:200]}")
            return
        rendered.append(PageFigure(filename, plot.title, plot.caption, png, plot.left_out, html))

    add("accuracy.png", lambda: plot_accuracy(runs), "test accuracy",
        "no run has test_acc or val_acc with step or wall_time_s")
    add("losses.png", lambda: plot_losses(runs), "losses", "no run has train_loss, meta_loss or val_loss")
    for i, run in enumerate(runs):
        if run.metrics:
            add(f"classes_{i + 1:02d}_{_slug(run.name)}.png", lambda run=run: plot_classes(run),
                f"per-class accuracy of {run.name}", None)
    for i, run in enumerate(runs):
        if run.metrics and run.method in ("mwnet", "l2r", "mlc"):
            add(f"health_{i + 1:02d}_{_slug(run.name)}.png", lambda run=run: plot_health(run),
                f"health check of {run.name}", "no health record in metrics.jsonl (famus before issue 24)")
    for i, run in enumerate(runs):
        scores, flagged, problem = load_scores(run) if run.exists else (None, None, None)
        if problem:
            problems.setdefault(run.name, []).append(problem)
        if scores is not None:
            add(f"scores_{i + 1:02d}_{_slug(run.name)}.png",
                lambda run=run, s=scores, f=flagged: plot_scores(run, s, f), f"clean scores of {run.name}", None,
                after=lambda run=run, s=scores, f=flagged: suspects_html(run, s, f))
    mwnet = any(r.method == "mwnet" for r in runs)
    add("v_curves.png", lambda: plot_v_curves(runs), "MW-Net's weight function",
        "no MW-Net run logged V(loss)" if mwnet else None)
    if any("split_precision" in r for run in runs for r in run.metrics):
        add("split.png", lambda: plot_split(runs), "pseudo-clean split", "no split_precision numbers")
    injected = any(str(r.config.get("noise", "none")) != "none" for r in runs)
    add("weight_quality.png", lambda: plot_weight_quality(runs), "weight quality",
        "no run logged weight quality (it needs injected noise and a meta method)" if injected else None)
    add("stage_time.png", lambda: plot_stage_times(runs), "time per iteration by stage",
        "no run has time_per_iter_s or stage_time_s")
    methods = list(dict.fromkeys(r.method for r in runs if r.tracking))
    for method in methods:
        add(f"meta_gradient_{_slug(method) if method != '?' else 'unknown'}.png",
            lambda method=method: plot_meta_gradient(runs, method), f"meta gradient of the {method} runs",
            "no usable tracking.jsonl records")
    if not methods and any(r.tracking_expected for r in runs):
        skipped.append("meta gradient over training: no run has a tracking.jsonl")
    for i, run in enumerate(runs):
        if run.tracking:
            add(f"weights_{i + 1:02d}_{_slug(run.name)}.png", lambda run=run: plot_weights(run, weight_steps),
                f"example weights of {run.name}", "its tracking.jsonl has no weights")
    gated = any(g in r.engine for r in runs for g in ("famus", "block", "random")) or any(r.tracking for r in runs)
    add("layers.png", lambda: plot_layers(runs), "layer activation counts", None if not gated else
        "no run has layer gates (gate_rate in metrics.jsonl or gates in tracking.jsonl)")

    return rendered, skipped


def _write(out: Path, rendered: list[PageFigure], texts: dict[str, str]) -> Path:
    """The PNGs and text files into ``out`` (each atomically)."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for f in rendered:
        atomic_write_bytes(out / f.filename, f.png)
    for name, text in texts.items():
        atomic_write_text(out / name, text)
    return out


def _path_of(runs: list[Run], name: str) -> str:
    return next((str(r.path) for r in runs if r.name == name), name)
