"""The pseudo-clean split's quality over training (``--meta-set pseudo`` runs)."""

from __future__ import annotations

from famus.report.plots import Plot, _legend, _series, new_figure, run_color
from famus.report.runs import Run


def plot_split(runs: list[Run]) -> Plot | None:
    """Precision and recall of the GMM's pseudo-clean set per epoch: mean of the two networks
    (solid) and each network (thin), for every run whose ``metrics.jsonl`` has ``split_precision``."""
    fig = new_figure(11, 4.2)
    ax_p, ax_r = fig.subplots(1, 2, sharey=True)
    left_out, drawn = [], 0
    for i, run in enumerate(runs):
        if not any("split_precision" in r for r in run.metrics):
            if run.metrics:
                left_out.append(f"{run.name}: no split_precision (not a --meta-set pseudo run)")
            continue
        for ax, key in ((ax_p, "split_precision"), (ax_r, "split_recall")):
            xs, ys = _series(run.metrics, "epoch", key)
            ax.plot(xs, ys * 100, marker="o", markersize=3, color=run_color(i), label=run.label)
            for net in ("net1", "net2"):
                xs, ys = _series(run.metrics, "epoch", f"{key}_{net}")
                ax.plot(xs, ys * 100, color=run_color(i), alpha=0.35, linewidth=0.8)
        drawn += 1
    if not drawn:
        return None
    ax_p.set(xlabel="epoch", ylabel="%", title="Precision of the pseudo-clean set")
    ax_r.set(xlabel="epoch", title="Recall of the pseudo-clean set")
    for ax in (ax_p, ax_r):
        ax.grid(alpha=0.3)
    _legend(ax_p, loc="best")
    return Plot(fig, "Pseudo-clean split",
                "Precision (left) and recall (right) of the GMM pseudo-clean set fit at the start of each epoch, "
                "against the injected noise (reporting only: training never reads the clean labels); thin lines: "
                "each network.",
                left_out)
