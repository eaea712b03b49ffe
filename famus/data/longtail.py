"""Exponential long-tail subsampling (the CIFAR-10/100-LT protocol of LDAM / MW-Net).

Class ``i`` keeps ``n_i = floor(n_max * imbalance ** (-i / (C - 1)))`` examples, so class 0
is the head (``n_max``) and class ``C - 1`` the tail (``n_max / imbalance``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from famus.data.split import check_labels, take_per_class


def longtail_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Per-class sizes of an exponential long-tail profile.

    Args:
        n_max: size of the head class (class 0), >= 1.
        num_classes: C >= 1.
        imbalance: ratio head/tail, >= 1 (1 = balanced).

    Returns:
        ``[n_0, ..., n_{C-1}]``, non-increasing, ``n_0 == n_max``.

    Raises:
        ValueError: on invalid arguments or if the tail would get 0 examples.

    >>> longtail_counts(5000, 10, 100)[::9]
    [5000, 50]
    """
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not (imbalance >= 1.0 and math.isfinite(imbalance)):
        raise ValueError(f"imbalance factor must be a finite number >= 1, got {imbalance}")
    if num_classes == 1:
        return [int(n_max)]
    counts = []
    for i in range(num_classes):
        value = n_max * imbalance ** (-i / (num_classes - 1))
        # The relative epsilon stops float error from flooring an exact integer
        # (e.g. 5000 / 100 = 49.999999...) one below the intended size.
        counts.append(int(math.floor(value * (1 + 1e-12))))
    if counts[-1] < 1:
        raise ValueError(
            f"imbalance {imbalance} with n_max {n_max} leaves class {num_classes - 1} with 0 examples; "
            f"use imbalance <= {n_max}"
        )
    return counts


def longtail_indices(
    labels: Tensor,
    imbalance: float,
    generator: torch.Generator,
    n_max: int | None = None,
    num_classes: int | None = None,
) -> Tensor:
    """Random subset of a (balanced) training set following :func:`longtail_counts`.

    Args:
        labels: int tensor (N,) of labels in ``[0, C)``.
        imbalance: head/tail ratio >= 1.
        generator: seeded ``torch.Generator`` choosing which examples are kept.
        n_max: head-class size; default the size of the largest class.
        num_classes: C; default ``labels.max() + 1``.

    Returns:
        Sorted int64 tensor (sum n_i,) of kept indices into ``labels``.

    Raises:
        ValueError: if some class has fewer examples than its profile needs.
    """
    labels, num_classes = check_labels(labels, num_classes)
    counts = torch.bincount(labels, minlength=num_classes)
    if n_max is None:
        n_max = int(counts.max()) if num_classes else 0
    target = longtail_counts(n_max, num_classes, imbalance)
    short = [c for c in range(num_classes) if int(counts[c]) < target[c]]
    if short:
        c = short[0]
        raise ValueError(
            f"long-tail profile needs {target[c]} examples of class {c} but it has only {int(counts[c])}; "
            "lower n_max"
        )
    quota = torch.tensor(target, dtype=torch.long)
    kept, _ = take_per_class(labels, quota, generator)
    return kept
