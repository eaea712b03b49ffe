"""Weight-quality figures: does the meta-learner put its weight on the clean examples?

From the ``quality_steps`` windows every run with injected noise writes into ``metrics.jsonl``
(:mod:`famus.train.quality`): weight AUROC and clean-share lift against step for all runs, and
MW-Net's learned weight function ``V(loss)`` at several points of training, one panel per run (from
the health windows, ``health_steps``, where no noise was injected).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from famus.report.plots import Plot, _legend, new_figure, run_color
from famus.report.runs import Run, num


def quality_windows(run: Run) -> list[dict[str, Any]]:
    """The run's logged weight-quality windows, in step order."""
    return [w for r in run.metrics for w in (r.get("quality_steps") or []) if isinstance(w, dict) and "step" in w]


def plot_weight_quality(runs: list[Run]) -> Plot | None:
    """Weight AUROC (left) and clean-share lift (right) against training step, one line per run."""
    fig = new_figure(11, 4.0)
    ax_auc, ax_lift = fig.subplots(1, 2, sharex=True)
    left_out, drawn = [], 0
    for i, run in enumerate(runs):
        windows = quality_windows(run)
        if not windows:
            if run.method != "erm":
                left_out.append(f"{run.name}: no weight-quality windows (noise not injected, or an older run)")
            continue
        for ax, key in ((ax_auc, "weight_auroc"), (ax_lift, "clean_lift")):
            pts = [(num(w, "step"), num(w, key)) for w in windows]
            pts = [p for p in pts if p[0] is not None and p[1] is not None]
            if pts:
                xs, ys = np.array(pts, dtype=float).T
                ax.plot(xs, ys, marker="o", markersize=2.5, color=run_color(i), label=run.label)
                drawn += 1
    if not drawn:
        return None
    ax_auc.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax_lift.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax_lift.axhline(0.1, color="grey", lw=0.6, ls=":")
    ax_auc.set(xlabel="training step", ylabel="AUROC (clean vs noisy)", title="Weight AUROC", ylim=(0, 1))
    ax_lift.set(xlabel="training step", ylabel="clean share - clean fraction", title="Clean-share lift")
    for ax in (ax_auc, ax_lift):
        ax.grid(alpha=0.3)
    _legend(ax_auc, loc="lower right")
    return Plot(fig, "Weight quality",
                "Left: the probability that a clean example of the batch gets more weight than a noisy one "
                "(0.5: no separation). Right: the share of the batch's weight on clean examples minus the "
                "batch's clean fraction (0: uniform weights; dotted: 0.1). Means over each log window.", left_out)


def plot_v_curves(runs: list[Run], panels: int = 6) -> Plot | None:
    """MW-Net's ``V(loss)`` at up to ``panels`` points of training, one panel per run."""
    curves = []
    for run in runs:
        windows = [w for w in quality_windows(run) if isinstance(w.get("v_curve"), dict)]
        if not windows:  # runs without injected noise log V(loss) in their health windows
            windows = [w for r in run.metrics for w in (r.get("health_steps") or [])
                       if isinstance(w, dict) and "step" in w and isinstance(w.get("v_curve"), dict)]
        if windows:
            pick = np.unique(np.linspace(0, len(windows) - 1, min(panels, len(windows))).round().astype(int))
            curves.append((run, [windows[j] for j in pick]))
    if not curves:
        return None
    top = max([float(v) for _run, ws in curves for w in ws for v in w["v_curve"].values()
               if isinstance(v, (int, float)) and np.isfinite(v)] + [1e-3])
    fig = new_figure(min(4.0 * len(curves), 16), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(curves), sharey=True))
    for ax, (run, windows) in zip(axes, curves):
        shades = np.linspace(0.25, 1.0, len(windows))
        for shade, w in zip(shades, windows):
            xs = np.array([float(k) for k in w["v_curve"]])
            ys = np.array(list(w["v_curve"].values()), dtype=float)
            ax.plot(xs, ys, marker="o", markersize=2.5, color=(0.1, 0.3, 0.7, shade), label=f"step {w['step']}")
        ax.set(xlabel="training loss", title=run.name, ylim=(0, min(1.0, top * 1.1)))
        ax.grid(alpha=0.3)
        _legend(ax, loc="best")
    axes[0].set_ylabel("V(loss)")
    return Plot(fig, "MW-Net's weight function",
                "The meta model's weight V(loss) at fixed losses, at several points of training (darker: later; the "
                "y axis ends just above the largest V). Learning the weighting means V falls at high losses: wrong "
                "labels have high losses. The batch's weights are V normalized to sum 1, so V's scale is free.")
