"""The report's figures on speed and on the meta gradient: stage times, meta gradient, tracked weights, layers.

Each ``plot_*`` function takes :class:`~famus.report.runs.Run` objects and returns a
:class:`Plot` (a figure, what it shows, and which runs it leaves out and why), or ``None``
when no run has the data for it. :func:`to_png` renders a figure to PNG bytes. The other figures:
:mod:`~famus.report.curves` (accuracy, losses), :mod:`~famus.report.classes` (per class),
:mod:`~famus.report.health` (the weighting's health check), :mod:`~famus.report.suspects` (clean
scores, likely label errors), :mod:`~famus.report.quality` (weight quality on injected noise).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from famus.meta.engines.base import STAGES  # the paper's Fig. 1b split of one iteration
from famus.report.curves import plot_accuracy  # noqa: F401 (where it has always been importable from)
from famus.report.figure import DPI, Plot, _legend, _series, new_figure, run_color, to_png  # noqa: F401
from famus.report.runs import Run, num

STAGE_COLORS = {
    "virtual_forward": "#9ecae1",
    "virtual_backward": "#3182bd",
    "meta_forward": "#fdae6b",
    "meta_backward": "#e6550d",
    "actual_forward": "#a1d99b",
    "actual_backward": "#31a354",
}
OTHER_COLOR = "#d9d9d9"
TOTAL_COLOR = "#969696"
CLEAN_COLOR = "#1f77b4"
NOISY_COLOR = "#d62728"
MAX_LAYERS_SHOWN = 40  # beyond this, layers that were never on are left out of the layer chart


# ---------------------------------------------------------------------------- stage times
def stage_segments(run: Run) -> tuple[dict[str, float], float | None, int | None]:
    """The last epoch's time per iteration split by stage, in seconds.

    Returns:
        ``(segments, total, epoch)``: stage -> seconds (plus ``"other"``: the measured
        total minus the stages, when positive; or ``"total"`` alone for runs without stage
        times, e.g. ERM), the total ``time_per_iter_s`` and the epoch used.
    """
    rec = next((r for r in reversed(run.metrics)
                if num(r, "time_per_iter_s") is not None or isinstance(r.get("stage_time_s"), dict)), None)
    if rec is None:
        return {}, None, None
    total = num(rec, "time_per_iter_s")
    raw = rec.get("stage_time_s") if isinstance(rec.get("stage_time_s"), dict) else {}
    names = [s for s in STAGES if s in raw] + [s for s in raw if s not in STAGES]
    seg = {s: num(raw, s) for s in names}
    seg = {s: v for s, v in seg.items() if v is not None and v >= 0}
    if not seg:
        return ({"total": total} if total is not None else {}), total, num(rec, "epoch")
    if total is not None and total - sum(seg.values()) > 0:
        seg["other"] = total - sum(seg.values())
    return seg, total, num(rec, "epoch")


def plot_stage_times(runs: list[Run]) -> Plot | None:
    """Stacked bars, one per run: the last epoch's milliseconds per iteration by stage."""
    bars, left_out = [], []
    for i, run in enumerate(runs):
        if not run.metrics:
            continue
        seg, total, _epoch = stage_segments(run)
        if seg:
            bars.append((i, run, seg, total))
        else:
            left_out.append(f"{run.name}: no time_per_iter_s or stage_time_s in {run.path.name}/metrics.jsonl")
    if not bars:
        return None
    fig = new_figure(max(5.0, 1.6 * len(bars) + 3.5), 4.6)
    ax = fig.subplots()
    seen: set[str] = set()
    for x, (_i, _run, seg, total) in enumerate(bars):
        bottom = 0.0
        for name, sec in seg.items():
            color = STAGE_COLORS.get(name, TOTAL_COLOR if name == "total" else OTHER_COLOR)
            label = {"other": "other (data, bookkeeping)", "total": "total (no stage times)"}.get(name, name)
            ax.bar(x, sec * 1000, bottom=bottom, color=color, edgecolor="white", width=0.6,
                   label=None if label in seen else label, hatch="//" if name == "total" else None)
            seen.add(label)
            bottom += sec * 1000
        top = total * 1000 if total is not None else bottom
        ax.annotate(f"{top:.1f} ms", (x, max(top, bottom)), ha="center", va="bottom", fontsize="small",
                    xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(bars)), [f"{r.name}\n({r.method}/{r.engine})" if r.method != "erm"
                                     else f"{r.name}\n(erm)" for _i, r, _s, _t in bars], fontsize="small")
    ax.set(ylabel="time per iteration (ms)", title="Time per iteration by stage (last epoch)")
    ax.margins(y=0.12)
    ax.grid(axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = [labels.index(n) for n in [*STAGES, "other (data, bookkeeping)", "total (no stage times)"] if n in labels]
    ax.legend([handles[j] for j in order][::-1], [labels[j] for j in order][::-1], fontsize="small",
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return Plot(fig, "Time per iteration by stage",
                "Mean time per iteration in the last epoch, split into the six stages of one meta-learning "
                "iteration (paper Fig. 1b); 'other' is the rest of the measured time per iteration. "
                "Runs without stage times (ERM) show the total only.", left_out)


# ---------------------------------------------------------------------------- meta gradient
def _tracked(run: Run, key: str) -> list[dict[str, Any]]:
    return [r for r in run.tracking if num(r, "step") is not None and isinstance(r.get(key), dict)]


def plot_meta_gradient(runs: list[Run], method: str) -> Plot | None:
    """The meta gradient over training (from ``tracking.jsonl``) of the runs of one ``method``, 2x2 panels.

    One figure per method: runs of different methods have different meta parameters
    (MW-Net's weighting net, L2R's per-example ``eps``), whose gradients do not share a scale.

    (a) running mean +- running std of the projection of the meta gradient on the exact
    gradient's running-mean direction; (b) running std of the whole meta gradient,
    ``sqrt(trace of its running covariance)``; (c) cosine(engine, exact) per tracked step;
    (d) relative error ``||g_engine - g_exact|| / ||g_exact||`` per tracked step.
    """
    mine = [(i, r) for i, r in enumerate(runs) if r.exists and r.method == method]
    usable = [(i, r) for i, r in mine if _tracked(r, "running")]
    left_out = [f"{r.name}: no usable tracking.jsonl records" for _i, r in mine if not _tracked(r, "running")]
    if not usable:
        return None
    fig = new_figure(12, 8)
    (ax_p, ax_v), (ax_c, ax_e) = fig.subplots(2, 2, sharex=True)
    log_v = log_e = True
    for i, run in usable:
        recs = _tracked(run, "running")
        color = run_color(i)
        kinds = ("exact",) if run.engine == "exact" else ("engine", "exact")
        for kind in kinds:
            rows = [(num(r, "step"), r["running"].get(kind)) for r in recs]
            rows = [(s, d) for s, d in rows if isinstance(d, dict)]
            name = f"{run.name} ({run.engine if kind == 'engine' else 'exact'})"
            style = "-" if kind == "engine" or run.engine == "exact" else "--"
            pm = [(s, num(d, "proj_mean"), num(d, "proj_var"), num(d, "proj")) for s, d in rows]
            pm = [p for p in pm if p[1] is not None and p[2] is not None]
            if pm:
                s = np.array([p[0] for p in pm])
                m = np.array([p[1] for p in pm])
                sd = np.sqrt(np.maximum([p[2] for p in pm], 0.0))
                ax_p.plot(s, m, style, color=color, label=name, marker="o" if len(s) < 3 else None, markersize=3)
                ax_p.fill_between(s, m - sd, m + sd, color=color, alpha=0.12 if kind == "engine" else 0.07)
                raw = [(p[0], p[3]) for p in pm if p[3] is not None]
                if raw:
                    ax_p.plot([a for a, _ in raw], [b for _, b in raw], ".", color=color, alpha=0.35, markersize=3)
            tv = [(s, num(d, "total_var")) for s, d in rows]
            tv = [(s, math.sqrt(max(v, 0.0))) for s, v in tv if v is not None]
            if tv:
                ax_v.plot([a for a, _ in tv], [b for _, b in tv], style, color=color, label=name,
                          marker="o" if len(tv) < 3 else None, markersize=3)
                log_v &= all(b > 0 for _, b in tv)
        if run.engine == "exact":
            continue  # the engine is exact: cosine 1 and error 0 by construction
        mg = [(num(r, "step"), r.get("meta_grad")) for r in recs]
        mg = [(s, d) for s, d in mg if isinstance(d, dict)]
        cos = [(s, num(d, "cosine")) for s, d in mg if num(d, "cosine") is not None]
        err = [(s, num(d, "rel_error")) for s, d in mg if num(d, "rel_error") is not None]
        if cos:
            ax_c.plot([a for a, _ in cos], [b for _, b in cos], "o-", color=color, markersize=3, label=run.label)
        if err:
            ax_e.plot([a for a, _ in err], [b for _, b in err], "o-", color=color, markersize=3, label=run.label)
            log_e &= all(b > 0 for _, b in err)
    ax_p.axhline(0, color="black", lw=0.6)
    ax_p.set(ylabel="projection on mean direction", title="(a) meta gradient: running mean ± std")
    ax_v.set(ylabel="sqrt(total variance)", title="(b) spread of the whole meta gradient")
    ax_c.axhline(1, color="black", lw=0.6)
    ax_c.set(xlabel="training step", ylabel="cosine(engine, exact)", title="(c) agreement with the exact gradient")
    ax_e.set(xlabel="training step", ylabel="||g - g_exact|| / ||g_exact||", title="(d) relative error")
    if log_v and ax_v.lines:
        ax_v.set_yscale("log")
    if log_e and ax_e.lines:
        ax_e.set_yscale("log")
    for ax in (ax_p, ax_v, ax_c, ax_e):
        ax.grid(alpha=0.3)
    _legend(ax_p)
    _legend(ax_c)
    if not ax_c.lines:
        ax_c.text(0.5, 0.5, "all runs use the exact engine", ha="center", va="center", transform=ax_c.transAxes)
        ax_e.text(0.5, 0.5, "all runs use the exact engine", ha="center", va="center", transform=ax_e.transAxes)
    fig.suptitle(f"Meta gradient of {method} runs (tracked steps)")
    return Plot(fig, f"Meta gradient over training: {method}",
                "Tracked steps only. (a) The scalar summary of the meta gradient: its projection on the unit "
                "direction of the exact meta gradient's running mean; lines are the running mean, bands ± one "
                "running standard deviation, dots the per-step values (run's engine solid, exact dashed, both "
                "evaluated on the same batch). (b) Running standard deviation of the whole flattened meta "
                "gradient, sqrt(trace of its covariance). (c, d) Cosine similarity and relative error of the "
                "run's engine against the exact meta gradient.", left_out)


# ---------------------------------------------------------------------------- weights
def weight_records(run: Run) -> list[dict[str, Any]]:
    """Tracked records with a usable ``weights`` entry, in step order."""
    recs = [r for r in _tracked(run, "weights") if isinstance(r["weights"].get("clean"), list)
            and isinstance(r["weights"].get("noisy"), list) or isinstance(r["weights"].get("all"), list)]
    return sorted(recs, key=lambda r: r["step"])


def choose_steps(tracked: list[int], wanted: list[int] | None) -> list[tuple[int, int | None]]:
    """Tracked steps to show: ``(step, requested)`` pairs.

    Default: the first, middle and last tracked steps. Requested steps map to the nearest
    tracked step (``requested`` is set when it differs); duplicates are dropped.
    """
    if not tracked:
        return []
    if not wanted:
        picks = [tracked[0], tracked[len(tracked) // 2], tracked[-1]]
        return [(s, None) for s in dict.fromkeys(picks)]
    out: dict[int, int | None] = {}
    for w in wanted:
        s = min(tracked, key=lambda t: (abs(t - w), t))
        out.setdefault(s, None if s == w else w)
    return list(out.items())


def _values(v: list[Any], n: float) -> np.ndarray:
    arr = np.array([x for x in v if isinstance(x, (int, float)) and not isinstance(x, bool)], dtype=float)
    return arr[np.isfinite(arr)] * n


def plot_weights(run: Run, steps: list[int] | None = None) -> Plot | None:
    """Histograms of the example weights at a few tracked steps, clean vs noisy labels overlaid.

    The x axis is ``n * weight`` (``n`` the batch size), so 1 is the weight plain ERM gives
    every example.
    """
    recs = weight_records(run)
    if not recs:
        return None
    by_step = {r["step"]: r for r in recs}
    picks = choose_steps(sorted(by_step), steps)
    fig = new_figure(4.2 * len(picks) + 0.6, 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(picks), sharex=True))
    data = []
    for step, req in picks:
        w = by_step[step]["weights"]
        clean, noisy, every = (w.get(k) if isinstance(w.get(k), list) else [] for k in ("clean", "noisy", "all"))
        n = num(w, "n") or (len(clean) + len(noisy) + len(every))
        data.append((step, req, w, _values(clean, n), _values(noisy, n), _values(every, n)))
    # scaled to where the weights are: a few outliers beyond the 99th percentile go into the last bin
    pooled = np.concatenate([v for *_, c, nz, a in data for v in (c, nz, a)] + [np.ones(1)])
    hi = max(float(np.percentile(pooled, 99)), 1.0) * 1.05
    bins = np.linspace(0.0, hi, 26)
    for ax, (step, req, w, clean, noisy, every) in zip(axes, data):
        for vals, color, label in ((clean, CLEAN_COLOR, "clean labels"), (noisy, NOISY_COLOR, "noisy labels"),
                                   (every, "#4c72b0", "all examples (no noise mask)")):
            if vals.size:
                ax.hist(np.minimum(vals, hi * 0.999), bins=bins, color=color, alpha=0.6, label=f"{label} ({vals.size})")
        ax.axvline(1.0, color="black", lw=0.8, ls=":")
        share = num(w, "clean_share")
        epoch = num(by_step[step], "epoch")
        head = f"step {step}" + (f" (nearest to {req})" if req is not None else "")
        head += f", epoch {int(epoch)}" if epoch is not None else ""
        head += f"\nweight share on clean: {share:.2f}" if share is not None else ""
        ax.set(title=head, xlabel="n × weight (1 = ERM's weight)")
        ax.grid(alpha=0.3)
        _legend(ax)
    axes[0].set_ylabel("examples")
    for ax in axes:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Example weights: {run.label}")
    return Plot(fig, f"Example weights: {run.label}",
                "Histograms of the per-example weights of one training batch at tracked steps, split by "
                "whether the training label is corrupted (clean blue, noisy red; one histogram where the noise was "
                "not injected), scaled by the batch size so that 1 is plain ERM's weight; the x axis ends at the "
                "99th percentile (larger weights are counted in the last bin).")


# ---------------------------------------------------------------------------- layers
def gate_fractions(run: Run) -> tuple[dict[str, tuple[float, float]], str] | None:
    """Per layer, ``(steps on, steps counted)``, and where it came from.

    Uses ``gate_rate`` of ``metrics.jsonl`` (every training step; each epoch weighted by its
    iterations) when present, with the layer order and never-gated layers of
    ``tracking.jsonl``; otherwise the ``gates`` of the tracked steps. ``None`` when the run
    has no gates (its engine has no gating: every layer contributes at every step).
    """
    tracked = [r["gates"] for r in _tracked(run, "gates")]
    order: dict[str, None] = {}
    for g in tracked:
        order.update(dict.fromkeys(g))
    on: dict[str, float] = {}
    total, prev, source = 0.0, 0.0, ""
    for r in run.metrics:
        step = num(r, "step")
        iters = step - prev if step is not None and step > prev else 1.0
        prev = step if step is not None else prev
        rates = r.get("gate_rate")
        if not isinstance(rates, dict):
            continue
        total += iters
        for k, v in rates.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                on[k] = on.get(k, 0.0) + float(v) * iters
    if total:
        source = "every training step (metrics.jsonl gate_rate)"
        order.update(dict.fromkeys(on))
        return {k: (on.get(k, 0.0), total) for k in order}, source
    if tracked:
        counts = {k: 0.0 for k in order}
        for g in tracked:
            for k, v in g.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0.5:
                    counts[k] += 1
        return {k: (c, float(len(tracked))) for k, c in counts.items()}, "tracked steps (tracking.jsonl gates)"
    return None


def plot_layers(runs: list[Run]) -> Plot | None:
    """Horizontal bars per layer: the fraction of steps each layer contributed to the meta gradient."""
    gated, left_out = [], []
    for i, run in enumerate(runs):
        if not run.exists or run.method == "erm":
            continue
        got = gate_fractions(run)
        if got is None:
            if run.engine == "exact":
                left_out.append(f"{run.name}: exact engine, every layer contributes at every step (no gating)")
            elif run.metrics or run.tracking:
                left_out.append(f"{run.name}: no gate_rate in metrics.jsonl and no gates in tracking.jsonl")
            continue
        gated.append((i, run, *got))
    if not gated:
        return None
    layers: dict[str, None] = {}
    for *_x, fr, _s in gated:
        layers.update(dict.fromkeys(fr))
    names = list(layers)
    if len(names) > MAX_LAYERS_SHOWN:
        ever = [n for n in names if any(fr.get(n, (0.0, 1.0))[0] > 0 for *_x, fr, _s in gated)]
        left_out.append(f"{len(names) - len(ever)} layers that were never on in any run are not shown")
        names = ever
    k = len(gated)
    height = 0.8 / k
    fig = new_figure(10, min(40.0, max(3.0, 0.3 * len(names) * max(1.0, k / 2) + 1.8)))
    ax = fig.subplots()
    y = np.arange(len(names))
    for j, (i, run, fr, source) in enumerate(gated):
        vals = [fr.get(n, (0.0, 0.0)) for n in names]
        frac = [c / t if t else 0.0 for c, t in vals]
        pos = y - 0.4 + height * (j + 0.5)
        short = "all steps" if source.startswith("every") else "tracked steps"
        ax.barh(pos, frac, height=height * 0.9, color=run_color(i), label=f"{run.label}, {short}")
        if len(names) * k <= 80:
            for p, (c, t), f in zip(pos, vals, frac):
                ax.text(f + 0.01, p, f"{c:.0f}/{t:.0f}", va="center", fontsize="x-small")
    ax.set_yticks(y, names, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlim(0, 1.18)
    ax.set(xlabel="fraction of steps the layer contributed to the meta gradient (steps on / steps)",
           title="Layer activation counts")
    ax.grid(axis="x", alpha=0.3)
    _legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return Plot(fig, "Layer activation counts",
                "For each layer (forward order, top to bottom), how many steps it contributed to the meta "
                "gradient (gate on) out of the steps counted: every training step from metrics.jsonl gate_rate "
                "where available, otherwise the tracked steps of tracking.jsonl.", left_out)
