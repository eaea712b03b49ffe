"""The weighting's health check in the report: figures and warnings that need no noise mask.

From what :mod:`famus.train.health` writes into ``metrics.jsonl``: per epoch ``health`` (the probe's
AUCs, the weight histogram, per-class mean weights, MLC's transition matrix, warnings) and per log
window ``health_steps`` (weight quantiles, warnings). Where noise was injected, the true weight AUROC
is drawn beside the probe for comparison.
"""

from __future__ import annotations

from html import escape
from typing import Any

import numpy as np
from matplotlib.ticker import FuncFormatter

from famus.report.figure import Plot, legend, new_figure
from famus.report.runs import Run, num
from famus.train.health import MIN_META_STEPS, PROBE_Z, probe_auc, recheck

PLAIN = FuncFormatter(lambda v, _pos: f"{v:g}")  # log axes read 0.01, 0.1, 1, not 10^-2
NO_PROBE = ("no probe: the run has no validation data (pass --val-per-class k, or give a val/ folder, to hold out "
            "trusted examples the meta model never trains on)")


def epochs_with(run: Run, key: str) -> list[dict[str, Any]]:
    """``(epoch record)`` s whose ``health`` holds ``key``, in order."""
    return [r for r in run.metrics if isinstance(r.get("health"), dict) and key in r["health"]
            and num(r, "epoch") is not None]


def health_windows(run: Run) -> list[dict[str, Any]]:
    """The run's ``health_steps`` windows, in step order."""
    return [w for r in run.metrics for w in (r.get("health_steps") or [])
            if isinstance(w, dict) and num(w, "step") is not None]


def _probe_panel(ax, run: Run) -> bool:
    recs = epochs_with(run, "probe_flip_auc")
    if not recs:
        ax.text(0.5, 0.5, "\n".join(_wrap(NO_PROBE, 45)), ha="center", va="center", transform=ax.transAxes,
                fontsize="small")
        ax.set_axis_off()
        return False
    ep = np.array([num(r, "epoch") for r in recs])
    for key, style, label in (("probe_flip_auc", "o-", "probe: trusted vs random wrong label"),
                              ("probe_hard_auc", "^-", "probe: trusted vs plausible wrong label"),
                              ("probe_vs_train", "s-", "probe: trusted vs training examples"),
                              ("sample_auroc", "k--", "true weight AUROC (injected noise)")):
        ys = [num(r["health"], key) for r in recs]
        if any(v is not None for v in ys):
            ax.plot(ep, [np.nan if v is None else v for v in ys], style, markersize=3, label=label)
    se = np.array([num(r["health"], "probe_se") or 0.0 for r in recs])
    ax.fill_between(ep, 0.5 - 2 * se, 0.5 + 2 * se, color="grey", alpha=0.2, label="no separation (±2 s.e.)")
    ax.set(xlabel="epoch", ylabel="AUC", ylim=(0, 1.02), title="(a) does the weighting prefer right labels?")
    ax.grid(alpha=0.3)
    legend(ax, loc="lower left")
    return True


def _quantile_panel(ax, run: Run) -> bool:
    wins = [w for w in health_windows(run) if isinstance(w.get("w_q"), list) and len(w["w_q"]) == 5]
    wins = [w for w in wins if all(isinstance(v, (int, float)) for v in w["w_q"])]
    if not wins:
        return False
    steps = np.array([w["step"] for w in wins], dtype=float)
    q = np.maximum(np.array([w["w_q"] for w in wins], dtype=float), 1e-3)  # the bin below 1e-3 drawn at 1e-3
    ax.fill_between(steps, q[:, 0], q[:, 4], color="#4c72b0", alpha=0.15, label="5-95%")
    ax.fill_between(steps, q[:, 1], q[:, 3], color="#4c72b0", alpha=0.35, label="25-75%")
    ax.plot(steps, q[:, 2], color="#4c72b0", label="median")
    ax.axhline(1.0, color="black", lw=0.8, ls=":", label="uniform (ERM)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PLAIN)
    lo, hi = q.min(), q.max()
    ax.set_ylim(max(lo / 1.5, 1e-3 / 1.2), hi * 1.5)
    ax.set(xlabel="training step", ylabel="weight × batch size (1 = uniform)", title="(b) spread of the weights")
    ax.grid(alpha=0.3, which="both")
    legend(ax, loc="lower left")
    return True


def _hist_panel(ax, run: Run) -> bool:
    recs = epochs_with(run, "weight_hist")
    hists = []
    for r in ([recs[0], recs[-1]] if len(recs) > 1 else recs):
        h = r["health"]["weight_hist"]
        try:
            edges, counts = np.array(h["edges"], dtype=float), np.array(h["counts"], dtype=float)
        except (KeyError, TypeError, ValueError):
            continue
        if edges.ndim == counts.ndim == 1 and edges.size == counts.size + 1 and counts.sum() > 0:
            hists.append((int(num(r, "epoch")), edges, counts / counts.sum() * 100))
    if not hists:
        return False
    nz = np.flatnonzero(sum(h for _e, _x, h in hists)[1:]) + 1  # bin 0 (below 1e-3) is not on a log axis
    for (ep, edges, share), (color, alpha) in zip(hists, [("#999999", 0.45), ("#4c72b0", 0.75)][-len(hists):]):
        zero = f", {share[0]:.0f}% below 0.001" if share[0] >= 0.5 else ""
        if nz.size:  # scaled to where the weights are: the non-empty bins only
            ax.stairs(share[nz.min():nz.max() + 1], edges[nz.min():nz.max() + 2], fill=True, color=color,
                      alpha=alpha, label=f"epoch {ep}{zero}")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(PLAIN)
    ax.axvline(1.0, color="black", lw=0.8, ls=":")
    ax.set(xlabel="weight × batch size (log scale; 1 = uniform)", ylabel="% of the epoch's weights",
           title="(c) weight distribution, first and last epoch")
    ax.grid(alpha=0.3)
    legend(ax, loc="upper left")
    return True


def _class_panel(ax, run: Run) -> bool:
    recs = epochs_with(run, "class_weight")
    if not recs:
        return False
    cw = recs[-1]["health"]["class_weight"]
    if not isinstance(cw, list) or not cw:
        return False
    vals = np.array([v if isinstance(v, (int, float)) else np.nan for v in cw], dtype=float)
    c = vals.size
    names = run.class_names if run.class_names and len(run.class_names) == c else [str(k) for k in range(c)]
    ax.bar(np.arange(c), np.nan_to_num(vals), color="#55a868")
    ax.axhline(1.0, color="black", lw=0.8, ls=":")
    ax.set_xticks(np.arange(c), [n[:12] for n in names], rotation=60 if c > 6 else 0, ha="right" if c > 6 else
                  "center", fontsize="small" if c <= 30 else "xx-small")
    epoch = int(num(recs[-1], "epoch"))
    ax.set(ylabel="mean weight × batch size", title=f"(d) mean weight per given class, epoch {epoch}")
    ax.grid(axis="y", alpha=0.3)
    return True


def _transition_panels(axes, run: Run) -> bool:
    recs = epochs_with(run, "t_diag")
    if not recs:
        return False
    ax_d, ax_t = axes[0], axes[1]
    ax_d.plot([num(r, "epoch") for r in recs], [num(r["health"], "t_diag") for r in recs], "o-", markersize=3)
    ax_d.set(xlabel="epoch", ylabel="mean of T's diagonal", ylim=(0, 1.02),
             title="(a) MLC: share of labels it keeps as given")
    ax_d.grid(alpha=0.3)
    t = recs[-1]["health"].get("transition")
    try:
        t = np.array(t, dtype=float)
    except (TypeError, ValueError):
        t = None
    if t is not None and t.ndim == 2 and t.shape[0] == t.shape[1]:
        im = ax_t.imshow(t, cmap="viridis", vmin=0, vmax=1)
        ax_t.set(xlabel="noisy label j", ylabel="clean class k", title="(b) learned T[k, j] = P(label j | class k)")
        ax_t.figure.colorbar(im, ax=ax_t, shrink=0.8)
    else:
        ax_t.set_axis_off()
    return True


def plot_health(run: Run) -> Plot | None:
    """The health-check figure of one run (MW-Net and L2R: four panels; MLC: its transition matrix)."""
    if not any(isinstance(r.get("health"), dict) for r in run.metrics):
        return None
    if run.method == "mlc":
        fig = new_figure(11, 4.2)
        if not _transition_panels(fig.subplots(1, 2), run):
            return None
        fig.suptitle(f"Health check: {run.label}")
        return Plot(fig, f"Health check: {run.label}",
                    "MLC learns a transition matrix T (row k: how labels of true class k were given). (a) The mean "
                    "of its diagonal over training: near 1, labels are kept; near 1/C, T explains everything as "
                    "noise. (b) T at the last epoch.")
    fig = new_figure(13, 8.5)
    (a, b), (c, d) = fig.subplots(2, 2)
    drawn = [_probe_panel(a, run), _quantile_panel(b, run), _hist_panel(c, run), _class_panel(d, run)]
    if not any(drawn[1:]):
        return None
    for ax, ok in zip((b, c, d), drawn[1:]):
        if not ok:
            ax.set_axis_off()
    fig.suptitle(f"Health check of the weighting: {run.label}")
    return Plot(fig, f"Health check: {run.label}",
                "Without knowing which labels are wrong. (a) The probe: validation examples are trusted and never in "
                "a meta batch; each is weighed with its trusted label and with a deliberately wrong one (a random "
                "other class, or the model's likeliest other class), and the curves are the probability that the "
                "trusted label weighs more (0.5: no separation; the grey band is chance). "
                "The third curve compares the trusted examples with training examples: about "
                "0.5 + p × (AUROC - 0.5) for a share p of wrong training labels. Where the noise was injected, the "
                "true weight AUROC on the same training examples is dashed. (b) Quantiles of the weights relative "
                "to uniform over training. (c) Their distribution (scaled to where the weights are). (d) Mean "
                "weight per given class: a class far below 1 is one the meta-learner distrusts.")


def _wrap(text: str, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}".strip()
    return lines + ([cur] if cur else [])


def health_lines(run: Run) -> list[str]:
    """The run's health summary: the last epoch's probe and warnings, and when each kind of warning was raised."""
    recs = [r for r in run.metrics if isinstance(r.get("health"), dict)]
    if not recs:
        return []
    last = recs[-1]["health"]
    out = []
    a, se = probe_auc(last), num(last, "probe_se") or 0.0
    if a is not None:
        verdict = ("separates them" if a > 0.5 + PROBE_Z * se else
                   "prefers the wrong labels" if a < 0.5 - PROBE_Z * se else "does not separate them")
        kinds = ", ".join(f"{what} {last[k]:.3f}" for k, what in (("probe_flip_auc", "random"),
                                                                  ("probe_hard_auc", "plausible"))
                          if num(last, k) is not None)
        out.append(f"last epoch: the probe's trusted labels weigh more than deliberately wrong ones with probability "
                   f"{a:.3f} ({kinds}; chance 0.5 ± {PROBE_Z * se:.3f}): the weighting {verdict}")
        t = num(last, "sample_auroc")
        if t is not None:
            out.append(f"true weight AUROC on the injected noise at the same moment: {t:.3f}")
    elif run.method in ("mwnet", "l2r"):
        out.append(NO_PROBE)
    d = num(last, "t_diag")
    if d is not None:
        out.append(f"last epoch: the transition matrix keeps {d:.1%} of each class's labels as given on average "
                   "(its mean diagonal; 1/C would explain every label as noise)")
    raised: dict[str, list[int]] = {}
    cfg = run.config
    balanced = cfg.get("imbalance", 1) in (1, 1.0, None) and cfg.get("loss", "ce") in ("ce", None)
    checked = recheck(recs, run.method, balanced)  # the current rule on the logged numbers
    for r, found in zip(recs, checked):
        for f in found:
            raised.setdefault(f.split(":")[0], []).append(int(num(r, "epoch") or 0))
    flags = recheck(recs, run.method, balanced, min_steps=0)[-1]  # the final state is judged however short the run
    meta = sum(r["meta_steps"] for r in recs if isinstance(r.get("meta_steps"), int))
    if run.method in ("mwnet", "l2r", "mlc") and meta < MIN_META_STEPS:
        out.append(f"warning: only {meta} meta updates in {len(recs)} epochs; the weighting is barely trained")
    out += [f"warning at the last epoch: {f}" for f in flags]
    for kind, eps in raised.items():
        out.append(f"'{kind}' raised at {len(eps)} of {len(recs)} epochs ({_epochs(eps)})")
    if not flags and not raised:
        out.append("no warning at any epoch (flat, collapsing, inverted, not separating)")
    return out


def _epochs(eps: list[int]) -> str:
    shown = ", ".join(str(e) for e in eps[:8])
    return f"epoch {shown}" + (f" and {len(eps) - 8} more" if len(eps) > 8 else "")


def health_html(runs: list[Run]) -> str:
    """The page's health section (escaped HTML), or "" when no run has a health check."""
    parts = []
    for run in runs:
        lines = health_lines(run)
        if lines:
            parts.append(f"<h3>{escape(run.label)}</h3><ul>" + "".join(
                f'<li class="{"warn" if ln.startswith("warning") else ""}">{escape(ln)}</li>' for ln in lines)
                + "</ul>")
    if not parts:
        return ""
    return ('<section id="health"><h2>Health check of the weighting</h2><p>Label-free checks of the meta-learner '
            "(they need no noise mask; famus/train/health.py, docs/health-check.md).</p>" + "".join(parts)
            + "</section>")
