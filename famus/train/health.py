"""A health check of the meta-learner's weighting that needs no noise mask (your own data).

Written into ``metrics.jsonl`` for MW-Net and L2R runs (and MLC's transition matrix), whether or
not noise was injected:

* per log window (``health_steps``): the quantiles ``w_q`` (5, 25, 50, 75, 95 %) of the per-example
  weights relative to uniform (``c_i * B``: 1.0 is ERM's weight), their coefficient of variation
  ``w_cv``, the share ``zero_share`` of examples weighing less than 1/1000 of uniform, MW-Net's
  ``v_curve``, MLC's ``t_diag`` (mean diagonal of the transition matrix), and ``flags``;
* per epoch (``health``): the weight histogram ``weight_hist`` (log bins), the mean relative weight
  of each given class ``class_weight``, MLC's ``transition`` (``C x C`` up to 20 classes, else its
  diagonal) and, where the run has a validation set, **the probe**:

  - ``probe_flip_auc``: the validation examples are trusted and never in a meta batch. Each is
    weighed twice by the method's current weighting, once with its trusted label and once with a
    deliberately wrong label (drawn once per run): the probability that the right label weighs more
    (ties half). The same scale as the weight AUROC on injected noise (0.5: no separation), on
    examples the model never trained on, for symmetric-like label errors.
  - ``probe_hard_auc``: the same with the most plausible wrong label (the model's likeliest other
    class at that moment): pair-like label errors, as confusions between similar classes are.
  - ``probe_vs_train``: the probability that a trusted validation example weighs more than a
    training example (a fixed sample of ``PROBE_TRAIN`` of them). If the clean training examples
    weigh like the trusted ones, this is ``(1 - p) * 0.5 + p * AUROC`` for a noise fraction ``p``;
    a model that fits its training examples gives them lower losses than unseen ones, which biases it.
  - ``probe_se`` / ``probe_train_se``: the standard errors of the two AUCs under no separation.
  - ``sample_auroc`` (injected noise only, for validation): the true weight AUROC on the same
    training sample at the same moment.

  Weights of the probe: MW-Net ``V(loss)`` (train-mode forward on copied buffers, no randomness);
  L2R ``max(-dL_c/d eps, 0)`` through :meth:`famus.MetaLearner.meta_gradient` (the run's engine, on
  chunks of the batch size, with a fixed meta batch), which changes no state.

Everything per step stays on the device (no host sync); the probe runs at the epoch's end and draws
from its own generator, so training is the same with or without it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from famus import distributed as dist
from famus.meta.methods import MLC
from famus.train.probe import Probe, auc, null_se, run_probe
from famus.train.quality import V_LOSSES, v_curve

LOG_LO, LOG_HI, PER_DECADE = -3, 2, 16  # weight histogram: log10 bins from 1e-3 to 1e2 of uniform
INNER = torch.logspace(LOG_LO, LOG_HI, (LOG_HI - LOG_LO) * PER_DECADE + 1, dtype=torch.float64)
BINS = INNER.numel() + 1  # below 1e-3 ("zero"), the log bins, at or above 1e2
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
MAX_FULL_TRANSITION = 20  # classes up to which MLC's whole transition matrix is logged

# warning thresholds (docs/health-check.md measures them)
MIN_META_STEPS = 50  # no verdict before this many meta updates
FLAT_CV = 0.1  # coefficient of variation of the relative weights below which the weighting is flat
COLLAPSE_V = 0.01  # MW-Net: V(loss) below this at every recorded loss
COLLAPSE_ZERO = 0.9  # L2R: share of examples weighing (nearly) 0
INVERT_RATIO = 1.1  # MW-Net: V(5) over the largest V at losses <= 1 above this
PROBE_Z = 2.0  # probe AUC this many standard errors from 0.5 is a verdict
CLEAN_SHARE = 0.1  # a noise share estimated below this reads as clean training labels


def bin_edges() -> list[float]:
    """The histogram's edges in relative weight: ``0``, the log edges, and the top edge repeated for the last bin."""
    inner = INNER.tolist()
    return [0.0, *inner, inner[-1] * 10 ** (1 / PER_DECADE)]


def hist_quantiles(counts: list[float], qs: tuple[float, ...] = QUANTILES) -> list[float | None]:
    """Quantiles of relative weights from :data:`BINS` histogram counts (log-linear inside a bin; 0 in the
    bin below 1e-3)."""
    edges = bin_edges()
    total = sum(counts)
    if total <= 0:
        return [None] * len(qs)
    out, cum, j = [], 0.0, 0
    cums = []
    for c in counts:
        cum += c
        cums.append(cum)
    for q in qs:
        target = q * total
        while j < len(counts) - 1 and cums[j] < target:
            j += 1
        lo, hi = edges[j], edges[j + 1]
        below = cums[j] - counts[j]
        frac = (target - below) / counts[j] if counts[j] else 0.0
        if lo <= 0:  # the "zero" bin
            out.append(0.0)
        else:
            out.append(round(lo * (hi / lo) ** frac, 6))
    return out


class HealthMeter:
    """Device sums of the per-example weights: a window's and an epoch's histogram, moments and class means.

    Args:
        num_classes: C (class means by given label).
        device: where the sums live (the training device).
    """

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.device = device
        self.inner = INNER.to(device)
        # window: histogram (BINS), then [sum rel, sum rel^2, count]; epoch: the same
        self._win = torch.zeros(BINS + 3, dtype=torch.float64, device=device)
        self._epoch = torch.zeros_like(self._win)
        self._cls = torch.zeros(2, num_classes, dtype=torch.float64, device=device)  # sums, counts
        self.meta_steps = 0  # meta updates in the window (host counter: StepStats.meta_updated is a bool)

    def update(self, weights: Tensor, y: Tensor, batch: int, meta_updated: bool) -> None:
        """One step: ``weights`` ``(n,)`` coefficients ``c_i`` of a global batch of ``batch`` examples, given
        labels ``y`` ``(n,)``."""
        rel = weights.detach().double() * batch
        hist = torch.bincount(torch.bucketize(rel, self.inner, right=True), minlength=BINS).double()
        add = torch.cat([hist, torch.stack([rel.sum(), (rel * rel).sum(), rel.new_full((), float(rel.numel()))])])
        self._win += add
        self._epoch += add
        self._cls[0].index_add_(0, y, rel)
        self._cls[1].index_add_(0, y, torch.ones_like(rel))
        self.meta_steps += int(meta_updated)

    @staticmethod
    def _summary(acc: Tensor) -> dict[str, Any]:
        (acc,) = dist.sum_over_ranks([acc])
        vals = acc.tolist()
        counts, (s, s2, n) = vals[:BINS], vals[BINS:]
        if not n:
            return {}
        mean = s / n
        var = max(s2 / n - mean * mean, 0.0)
        cv = math.sqrt(var) / mean if mean > 0 else None
        # equal weights (the warm-up, MLC): every quantile is the mean, not a point inside its bin
        q = [round(mean, 6)] * len(QUANTILES) if cv is not None and cv < 1e-6 else hist_quantiles(counts)
        return {"w_q": q, "w_cv": round(cv, 6) if cv is not None else None, "zero_share": round(counts[0] / n, 6),
                "_counts": counts}

    def window(self) -> dict[str, Any]:
        """The window's ``w_q``, ``w_cv``, ``zero_share`` and ``meta_steps``; then the window restarts."""
        out = self._summary(self._win)
        out.pop("_counts", None)
        out["meta_steps"] = self.meta_steps
        self._win.zero_()
        self.meta_steps = 0
        return out

    def epoch(self) -> dict[str, Any]:
        """The epoch's ``weight_hist`` and ``class_weight``; then the epoch restarts."""
        out = self._summary(self._epoch)
        counts = out.pop("_counts", None)
        (cls,) = dist.sum_over_ranks([self._cls])
        sums, n = cls.tolist()
        if counts is not None:
            out["weight_hist"] = {"edges": [round(e, 6) for e in bin_edges()], "counts": [int(c) for c in counts]}
        out["class_weight"] = [round(s / c, 6) if c else None for s, c in zip(sums, n)]
        self._epoch.zero_()
        self._cls.zero_()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"window": self._win.cpu().clone(), "epoch": self._epoch.cpu().clone(), "cls": self._cls.cpu().clone(),
                "meta_steps": self.meta_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._win = state["window"].to(self.device, torch.float64).clone()
        self._epoch = state["epoch"].to(self.device, torch.float64).clone()
        self._cls = state["cls"].to(self.device, torch.float64).clone()
        self.meta_steps = int(state["meta_steps"])


def transition_summary(method) -> dict[str, Any] | None:
    """MLC: ``transition`` (``C x C`` rounded, up to :data:`MAX_FULL_TRANSITION` classes, else its diagonal
    ``transition_diag``) and ``t_diag`` (mean diagonal); ``None`` for other methods."""
    if not isinstance(method, MLC) or method.meta_model is None:
        return None
    t = method.T.double().cpu()
    out: dict[str, Any] = {"t_diag": round(float(t.diagonal().mean()), 6)}
    if t.shape[0] <= MAX_FULL_TRANSITION:
        out["transition"] = [[round(v, 5) for v in row] for row in t.tolist()]
    else:
        out["transition_diag"] = [round(v, 5) for v in t.diagonal().tolist()]
    return out


def assess(method: str, window: dict[str, Any], probe: dict[str, Any] | None, meta_steps_done: int,
           balanced: bool = True, min_steps: int = MIN_META_STEPS) -> list[str]:
    """Warnings about the weighting, each a short line starting with ``flat``, ``collapsing``, ``inverted`` or
    ``not separating``.

    Args:
        method: the run's method name.
        window: the latest window's numbers (``w_cv``, ``zero_share``, ``v_curve``, ``t_diag``, ``num_classes``).
        probe: the latest probe numbers (or None).
        meta_steps_done: meta updates so far; no verdict before ``min_steps`` (:data:`MIN_META_STEPS`: early
            training's weighting is still moving; 0 judges the state as it is, e.g. at the end of a short run).
        balanced: the task is noise, not a long tail (where up-weighting high losses is the point).
    """
    if meta_steps_done < min_steps:
        return []
    out = []
    if method == "mlc":
        c, diag = window.get("num_classes"), window.get("t_diag")
        if c and diag is not None and diag < 1.5 / c:
            out.append(f"flat: the transition matrix's rows are near uniform (mean diagonal {diag:.3f})")
        return out
    v = window.get("v_curve")
    if method == "mwnet" and isinstance(v, dict) and v and max(v.values()) < COLLAPSE_V:
        out.append(f"collapsing: V(loss) < {COLLAPSE_V} at every loss (max {max(v.values()):.2g})")
    zero = window.get("zero_share")
    if method == "l2r" and zero is not None and zero > COLLAPSE_ZERO:
        out.append(f"collapsing: {zero:.0%} of the examples weigh 0")
    cv = window.get("w_cv")
    if cv is not None and cv < FLAT_CV and not out:
        out.append(f"flat: weights within {cv:.1%} (cv) of uniform")
    if balanced and method == "mwnet" and isinstance(v, dict):
        low = [v[k] for k in ("0.1", "0.3", "1") if k in v]  # losses of examples the model gets right
        if low and v.get("5") is not None and v["5"] > INVERT_RATIO * max(low):
            out.append(f"inverted: V(loss) rises with the loss (V(5) = {v['5']:.2g} > V(l <= 1) <= {max(low):.2g})"
                       + _clean_hint(probe))
    a = probe_auc(probe)
    if a is not None and balanced:
        se = probe.get("probe_se") or 0.0
        if a < 0.5 - PROBE_Z * se and not any(m.startswith("inverted") for m in out):
            out.append(f"inverted: both kinds of wrong labels weigh more than trusted ones on the probe (AUC {a:.2f})"
                       + _clean_hint(probe))
        elif abs(a - 0.5) <= PROBE_Z * se and not out:
            out.append(f"not separating: the probe's wrong labels weigh as much as its trusted ones (AUC {a:.2f})")
    return out


def probe_auc(probe: dict[str, Any] | None) -> float | None:
    """The probe's verdict AUC: the larger of the random and the plausible wrong label's (``None``: no probe).

    Each tracks the true weight AUROC of its own kind of noise (symmetric, pair-like; docs/health-check.md)
    and can miss the other kind, so a weighting that separates either kind passes.
    """
    if not probe:
        return None
    vals = [probe.get(k) for k in ("probe_flip_auc", "probe_hard_auc")]
    vals = [v for v in vals if isinstance(v, (int, float))]
    return max(vals) if vals else None


def _clean_hint(probe: dict[str, Any] | None) -> str:
    """When training examples weigh like trusted ones although wrong labels weigh more than right ones, the
    training labels look clean (``probe_vs_train = 0.5 + p (AUC - 0.5)`` gives a noise share ``p`` below 0.1): then
    V rising with the loss up-weights hard examples, which is no failure."""
    a = probe_auc(probe)
    vs = probe.get("probe_vs_train") if probe else None
    if a is None or vs is None or a >= 0.5 - 0.05:
        return ""
    if (vs - 0.5) / (a - 0.5) < CLEAN_SHARE:
        return (f"; but training examples weigh like trusted ones (AUC {vs:.2f}), so the training labels look "
                "clean and up-weighting hard examples may be right")
    return ""


def recheck(records: list[dict[str, Any]], method: str, balanced: bool = True,
            min_steps: int = MIN_META_STEPS) -> list[list[str]]:
    """The warnings of each ``metrics.jsonl`` epoch record, recomputed by :func:`assess` from its logged numbers
    (the epoch's ``health`` with its last window's), so a run logged by an older rule is judged by the current
    one. Records without a health check, or with unusable numbers, get no warning."""
    out, meta_done = [], 0
    for r in records:
        steps = r.get("meta_steps")
        meta_done += steps if isinstance(steps, int) and not isinstance(steps, bool) else 0
        h = r.get("health")
        if not isinstance(h, dict):
            out.append([])
            continue
        wins = r.get("health_steps")
        last = wins[-1] if isinstance(wins, list) and wins and isinstance(wins[-1], dict) else {}
        cw = h.get("class_weight")
        window = {**h, **last, "num_classes": len(cw) if isinstance(cw, list) and cw else None}
        if not isinstance(window.get("v_curve"), dict) and isinstance(r.get("v_curve"), dict):
            window["v_curve"] = r["v_curve"]
        try:
            out.append(assess(method, window, h, meta_done, balanced, min_steps))
        except (TypeError, ValueError, AttributeError):  # a hand-edited or damaged record
            out.append([])
    return out


def short(flags: list[str]) -> str:
    """The progress line's word for ``flags`` (their first words)."""
    return ",".join(dict.fromkeys(f.split(":")[0] for f in flags))


__all__ = ["HealthMeter", "Probe", "assess", "auc", "null_se", "recheck", "run_probe", "transition_summary",
           "hist_quantiles", "V_LOSSES", "v_curve"]
