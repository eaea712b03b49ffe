"""Weight quality: does the meta-learner put its weight on the clean examples?

Measured at no extra cost from what every step already returns (the per-example weights) and
what an injected-noise run already knows (which labels were corrupted):

* ``weight_auroc``: the probability that a clean example of the batch gets a larger weight than a
  noisy one (ties count half): 0.5 is no separation, 1.0 perfect. Mean over the steps of a window.
* ``clean_share``: the share of the batch's weight mass on clean examples; ``natural_share``: the
  batch's clean fraction (the share uniform weights would give); ``clean_lift``: their difference.
* ``weight_clean`` / ``weight_noisy``: mean weight of a clean / noisy example in units of the
  uniform weight (``weight * n / sum(weights)``, so 1.0 is uniform).
* For MW-Net, ``v_curve``: the meta model's output ``V(l)`` at the losses :data:`V_LOSSES`.

Everything stays on the device between log points (no host sync per step).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from famus import distributed as dist

V_LOSSES = (0.1, 0.3, 1.0, 2.0, 3.0, 5.0)  # losses at which MW-Net's V(l) is recorded
FIELDS = ("weight_auroc", "clean_share", "natural_share", "clean_lift", "weight_clean", "weight_noisy")


def batch_auroc(weights: Tensor, clean: Tensor) -> Tensor:
    """AUROC of ``weights`` as a score for "clean": ``P(w_clean > w_noisy) + P(tie) / 2``.

    Args:
        weights: ``(n,)`` per-example weights.
        clean: ``(n,)`` bool, True where the label is clean.

    Returns:
        0-d float64; NaN when the batch has no clean or no noisy example. No host sync.
    """
    w = weights.detach().double()
    cf = clean.to(w.device).double()
    diff = w.unsqueeze(1) - w.unsqueeze(0)  # (n, n): [i, j] = w_i - w_j; cheap for batch-sized n
    pair = cf.unsqueeze(1) * (1 - cf).unsqueeze(0)  # i clean, j noisy
    wins = ((diff > 0).double() + 0.5 * (diff == 0).double()) * pair
    count = pair.sum()
    return wins.sum() / torch.where(count > 0, count, w.new_full((), math.nan))


def batch_quality(weights: Tensor, clean: Tensor) -> Tensor:
    """The :data:`FIELDS` of one batch, as a float64 vector ``(6,)``; NaN marks an undefined entry.

    Args:
        weights: ``(n,)`` per-example weights (any scale; e.g. MW-Net's normalized ``c``).
        clean: ``(n,)`` bool, True where the label is clean.
    """
    w = weights.detach().double()
    cf = clean.to(w.device).double()
    nan = w.new_full((), math.nan)
    total = w.sum()
    total = torch.where(total != 0, total, nan)
    share = (w * cf).sum() / total
    natural = cf.mean()
    rel = w * w.numel() / total  # 1.0 is the uniform weight
    n_clean, n_noisy = cf.sum(), (1 - cf).sum()
    mean_clean = (rel * cf).sum() / torch.where(n_clean > 0, n_clean, nan)
    mean_noisy = (rel * (1 - cf)).sum() / torch.where(n_noisy > 0, n_noisy, nan)
    return torch.stack([batch_auroc(w, clean), share, natural, share - natural, mean_clean, mean_noisy])


class QualityMeter:
    """Accumulates :func:`batch_quality` over steps; :meth:`window` and :meth:`epoch` average them.

    Tensor ops only (no host sync per step); NaN entries (an all-clean batch's AUROC) are skipped.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._win = torch.zeros(2, len(FIELDS), dtype=torch.float64, device=device)  # sums, counts
        self._epoch = torch.zeros_like(self._win)

    def update(self, weights: Tensor, clean: Tensor) -> None:
        """Add one step's weights ``(n,)`` and clean mask ``(n,)``."""
        q = batch_quality(weights, clean)
        ok = torch.isfinite(q)
        add = torch.stack([torch.where(ok, q, torch.zeros_like(q)), ok.double()])
        self._win += add
        self._epoch += add

    @staticmethod
    def _means(acc: Tensor) -> dict[str, float | None]:
        (acc,) = dist.sum_over_ranks([acc])  # several processes: every rank's shards
        sums, counts = acc.tolist()
        return {f: (round(s / c, 6) if c else None) for f, s, c in zip(FIELDS, sums, counts)}

    def window(self) -> dict[str, float | None]:
        """Means since the last call (a log window), then reset the window."""
        out = self._means(self._win)
        self._win.zero_()
        return out

    def epoch(self) -> dict[str, float | None]:
        """Means over the epoch, then reset."""
        out = self._means(self._epoch)
        self._epoch.zero_()
        return out


@torch.no_grad()
def v_curve(meta_model: nn.Module | None, losses: tuple[float, ...] = V_LOSSES) -> dict[str, float] | None:
    """MW-Net's learned weight function at fixed losses: ``{"0.3": V(0.3), ...}``; ``None`` without one.

    Pure function of the meta model's parameters (no randomness, no state change).
    """
    if meta_model is None:
        return None
    p = next(meta_model.parameters())
    x = torch.tensor(losses, dtype=p.dtype, device=p.device).unsqueeze(1)  # (k, 1)
    try:
        v = meta_model(x).reshape(-1)
    except (RuntimeError, TypeError):  # a meta model that does not take (k, 1) losses (MLC's T, a custom one)
        return None
    return {f"{loss:g}": round(float(val), 6) for loss, val in zip(losses, v.tolist())}


def lift_onset(windows: list[dict[str, Any]], threshold: float = 0.1) -> int | None:
    """The first logged step whose window's ``clean_lift`` exceeds ``threshold`` (``None``: never)."""
    for w in windows:
        lift = w.get("clean_lift")
        if lift is not None and lift > threshold:
            return int(w["step"])
    return None
