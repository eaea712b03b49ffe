"""Per-class index selection: the clean meta set, stratified splits, class counts.

Everything is vectorised with one random permutation plus a stable sort by class, so
selecting ``k`` examples of every class costs O(N log N) with no loop over examples or
classes. All returned index tensors are sorted ascending (cache-friendly gathers and
order-independent of the permutation).
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_labels(labels: Tensor, num_classes: int | None = None) -> tuple[Tensor, int]:
    """Validate 1-D integer labels; return them as int64 plus the number of classes."""
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be a 1-D integer tensor, got dtype {labels.dtype} shape {tuple(labels.shape)}"
        )
    labels = labels.long()
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0, got {int(labels.min())}")
    inferred = int(labels.max()) + 1 if labels.numel() else 0
    if num_classes is None:
        num_classes = inferred
    elif inferred > num_classes:
        raise ValueError(f"label {inferred - 1} is out of range for num_classes={num_classes}")
    return labels, num_classes


def per_class_counts(labels: Tensor, num_classes: int | None = None) -> Tensor:
    """Number of examples of each class.

    Args:
        labels: int tensor (N,) with values in ``[0, num_classes)``.
        num_classes: C; default ``labels.max() + 1``.

    Returns:
        int64 tensor (C,) on ``labels.device``.
    """
    labels, num_classes = check_labels(labels, num_classes)
    return torch.bincount(labels, minlength=num_classes)


def take_per_class(labels: Tensor, quota: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Pick ``quota[c]`` uniformly random examples of every class ``c``.

    Args:
        labels: int64 tensor (N,), values in ``[0, C)``.
        quota: int64 tensor (C,), ``quota[c] <= count of class c`` (not checked here).
        generator: drives the random permutation (its device is used, result moved back).

    Returns:
        ``(taken, rest)``: sorted int64 index tensors, disjoint, together ``arange(N)``.
    """
    n = labels.numel()
    perm = torch.randperm(n, generator=generator, device=generator.device).to(labels.device)
    # Stable sort by class keeps the random order inside each class, so "the first
    # quota[c] of class c" is a uniform random subset of that class.
    order = torch.sort(labels[perm], stable=True).indices
    idx = perm[order]
    sorted_labels = labels[idx]
    counts = torch.bincount(labels, minlength=quota.numel())
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=labels.device) - starts[sorted_labels]
    keep = rank < quota.to(labels.device)[sorted_labels]
    return idx[keep].sort().values, idx[~keep].sort().values


def meta_split(
    labels: Tensor, per_class: int, generator: torch.Generator, num_classes: int | None = None
) -> tuple[Tensor, Tensor]:
    """Hold out ``per_class`` examples of every class as the trusted meta set.

    Pass the CLEAN labels: the meta set is the small clean set of L2R / MW-Net / FaMUS;
    label noise is then applied to ``train_idx`` only.

    Args:
        labels: int tensor (N,) of clean labels.
        per_class: k >= 0 meta examples per class (0 gives an empty meta set).
        generator: seeded ``torch.Generator``.
        num_classes: C; default ``labels.max() + 1`` (every class in ``[0, C)`` needs k examples).

    Returns:
        ``(train_idx, meta_idx)``: sorted, disjoint int64 tensors of shapes (N - C*k,) and (C*k,)
        whose union is ``arange(N)``.

    Raises:
        ValueError: if ``per_class`` is negative or larger than some class.
    """
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0, got {per_class}")
    labels, num_classes = check_labels(labels, num_classes)
    counts = torch.bincount(labels, minlength=num_classes)
    if num_classes and per_class > int(counts.min()):
        small = int(counts.argmin())
        raise ValueError(
            f"meta set needs {per_class} examples per class but class {small} has only "
            f"{int(counts[small])}; lower per_class to at most {int(counts.min())}"
        )
    quota = torch.full((num_classes,), per_class, dtype=torch.long)
    meta_idx, train_idx = take_per_class(labels, quota, generator)
    return train_idx, meta_idx


def stratified_split(
    labels: Tensor, test_fraction: float, generator: torch.Generator, num_classes: int | None = None
) -> tuple[Tensor, Tensor]:
    """Split into train/test keeping class proportions (``round(n_c * test_fraction)`` per class).

    Args:
        labels: int tensor (N,).
        test_fraction: in ``[0, 1]``.
        generator: seeded ``torch.Generator``.
        num_classes: C; default ``labels.max() + 1``.

    Returns:
        ``(train_idx, test_idx)``: sorted, disjoint int64 tensors covering ``arange(N)``.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    labels, num_classes = check_labels(labels, num_classes)
    counts = torch.bincount(labels, minlength=num_classes)
    quota = torch.round(counts.double() * test_fraction).long()
    test_idx, train_idx = take_per_class(labels, quota, generator)
    return train_idx, test_idx
