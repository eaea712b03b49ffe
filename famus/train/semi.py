"""MixMatch-style batches for pseudo-clean co-training (DivideMix, as in the FaMUS reference code).

A step's batch has a labeled half (the other network's pseudo-clean examples with their noisy
labels) and an unlabeled half (the rest). Targets, computed without gradients:

- labeled: ``sharpen(w * onehot(y) + (1 - w) * p)``, where ``w`` is the example's clean probability
  and ``p`` this network's prediction averaged over two augmented views (label refinement);
- unlabeled: ``sharpen`` of both networks' predictions averaged over two views (co-guessing).

Inputs and targets are then mixed with ``lam ~ Beta(alpha, alpha)``, ``lam = max(lam, 1 - lam)``.
The loss is soft cross-entropy on the labeled rows, ``lambda_u`` times the squared error of the
probabilities on the unlabeled rows, plus a prior penalty ``KL(uniform || mean prediction)`` that
keeps the network from collapsing onto a few classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SemiLoss:
    """Per-example loss of a mixed batch: soft cross-entropy for the first ``n_labeled`` rows,
    ``lambda_u * mean_c (softmax - target)^2`` for the unlabeled rest (MixMatch).

    Called as ``(logits (n, C), targets (n, C) float) -> (n,)``.
    """

    def __init__(self, n_labeled: int, lambda_u: float = 0.0) -> None:
        self.n_labeled = n_labeled
        self.lambda_u = lambda_u

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        ce = -(targets * F.log_softmax(logits, dim=1)).sum(1)
        mse = ((F.softmax(logits, dim=1) - targets) ** 2).mean(1)
        labeled = torch.arange(logits.shape[0], device=logits.device) < self.n_labeled
        return torch.where(labeled, ce, self.lambda_u * mse)

    def mean(self, logits: Tensor, targets: Tensor) -> Tensor:
        """DivideMix's ``Lx + lambda_u * Lu``: the labeled and unlabeled means, added (scalar)."""
        per = self(logits, targets)
        n = self.n_labeled
        lab = per[:n].mean() if n > 0 else per.new_zeros(())
        unl = per[n:].mean() if per.numel() > n else per.new_zeros(())
        return lab + unl


def prior_penalty(logits: Tensor) -> Tensor:
    """``KL(uniform || mean_i softmax(logits_i))``, scalar, for ``(n, C)`` logits (DivideMix's penalty)."""
    mean = F.softmax(logits, dim=1).mean(0)
    prior = torch.full_like(mean, 1.0 / mean.numel())
    return (prior * (prior.log() - mean.clamp_min(1e-12).log())).sum()


def sharpen(p: Tensor, temperature: float) -> Tensor:
    """``p^(1/T)`` renormalized, ``(n, C) -> (n, C)``."""
    q = p ** (1.0 / temperature)
    return q / q.sum(1, keepdim=True)


@dataclass
class MixedBatch:
    """A mixed batch: ``x`` ``(n, ...)`` inputs, ``t`` ``(n, C)`` soft targets; the first ``n_labeled``
    rows are labeled. ``lam`` is the mixing coefficient."""

    x: Tensor
    t: Tensor
    n_labeled: int
    lam: float


@torch.no_grad()
def _mean_softmax(models: list[nn.Module], views: list[Tensor]) -> Tensor:
    """``(n, C)`` softmax averaged over models and views, in eval mode (BatchNorm statistics untouched)."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    p = sum(F.softmax(m(v), 1) for v in views for m in models) / (len(models) * len(views))
    for m, was in zip(models, modes):
        m.train(was)
    return p


def mix_batch(
    model: nn.Module,
    other: nn.Module,
    labeled_views: tuple[Tensor, Tensor],
    labels: Tensor,
    clean_prob: Tensor,
    unlabeled_views: tuple[Tensor, Tensor],
    num_classes: int,
    temperature: float,
    alpha: float,
    rng: np.random.Generator,
    gen: torch.Generator,
    refine: bool = True,
) -> MixedBatch:
    """Targets by label refinement and co-guessing, then mixup (see the module docstring).

    Args:
        model, other: the network being trained and its peer.
        labeled_views: two augmentations ``(l, ...)`` of the labeled examples; the first is trained on.
        labels: ``(l,)`` int64 noisy labels of the labeled examples.
        clean_prob: ``(l,)`` their clean probability from the peer's GMM (the refinement weight).
        unlabeled_views: two augmentations ``(u, ...)`` of the unlabeled examples.
        refine: mix the noisy label with this network's prediction (``False``: the plain noisy label).
        rng: draws ``lam``; gen: draws the mixing permutation.

    Returns:
        :class:`MixedBatch` with ``l + u`` rows.
    """
    y = F.one_hot(labels, num_classes).to(labeled_views[0].dtype)
    if refine:
        w = clean_prob.to(y).unsqueeze(1)
        p_l = _mean_softmax([model], list(labeled_views))
        t_l = sharpen(w * y + (1 - w) * p_l, temperature)
    else:
        t_l = y
    t_u = sharpen(_mean_softmax([model, other], list(unlabeled_views)), temperature)
    x = torch.cat([labeled_views[0], unlabeled_views[0]])
    t = torch.cat([t_l, t_u])
    lam = float(rng.beta(alpha, alpha))
    lam = max(lam, 1 - lam)  # each mixed row stays closer to its own example (and its half)
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    return MixedBatch(lam * x + (1 - lam) * x[perm], lam * t + (1 - lam) * t[perm], labels.numel(), lam)
