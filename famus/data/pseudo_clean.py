"""Pseudo-clean split (supplement Algorithm 2): a 2-component GMM over per-example losses.

No clean labels are read here: the input is the per-example training loss against the
(noisy) training labels.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from torch import Tensor


def normalize_losses(losses: Tensor) -> Tensor:
    """Min-max scale ``(N,)`` losses to ``[0, 1]`` (a constant vector maps to zeros)."""
    losses = losses.detach().double().cpu()
    lo, hi = losses.min(), losses.max()
    return (losses - lo) / (hi - lo) if float(hi - lo) > 0 else torch.zeros_like(losses)


def gmm_clean_probability(
    losses: Tensor, max_iter: int = 10, tol: float = 1e-2, reg_covar: float = 5e-4, seed: int = 0
) -> Tensor:
    """Posterior probability of the low-mean component of a 2-component GMM fit to the losses.

    Args:
        losses: ``(N,)`` per-example losses (any scale; min-max normalized here).
        max_iter, tol, reg_covar: scikit-learn ``GaussianMixture`` settings (reference code: 10, 1e-2, 5e-4).
        seed: ``random_state`` of the GMM's initialization.

    Returns:
        ``(N,)`` float64 clean probabilities in ``[0, 1]``.
    """
    if losses.dim() != 1 or losses.numel() < 2:
        raise ValueError(f"need a 1-D vector of at least 2 losses, got shape {tuple(losses.shape)}")
    x = normalize_losses(losses).numpy().reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=max_iter, tol=tol, reg_covar=reg_covar, random_state=seed)
    gmm.fit(x)
    prob = gmm.predict_proba(x)[:, int(np.argmin(gmm.means_.reshape(-1)))]
    return torch.from_numpy(prob)


def split_by_probability(prob: Tensor, threshold: float, min_size: int = 1) -> tuple[Tensor, Tensor]:
    """Indices with ``prob > threshold`` (pseudo-clean) and the rest.

    If fewer than ``min_size`` examples pass, the ``min_size`` most probable ones are taken, so a
    degenerate fit never leaves an empty meta set (the reference code falls back to the median).

    Returns:
        ``(clean_idx, rest_idx)``: sorted int64 tensors partitioning ``arange(N)``.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    clean = prob > threshold
    if int(clean.sum()) < min_size:
        clean = torch.zeros_like(clean)
        clean[torch.argsort(prob, descending=True)[:min_size]] = True
    idx = torch.arange(prob.numel())
    return idx[clean], idx[~clean]


def split_quality(clean_idx: Tensor, corrupted: Tensor) -> dict[str, float]:
    """Precision and recall of a pseudo-clean set against the truly clean examples (reporting only).

    Args:
        clean_idx: indices selected as clean.
        corrupted: ``(N,)`` bool, True where the training label is wrong.
    """
    truly_clean = ~corrupted.cpu()
    selected = torch.zeros_like(truly_clean)
    selected[clean_idx.cpu()] = True
    tp = int((selected & truly_clean).sum())
    return {
        "split_precision": tp / max(int(selected.sum()), 1),
        "split_recall": tp / max(int(truly_clean.sum()), 1),
        "split_size": int(selected.sum()),
    }
