"""Long-tail subsampling, the clean meta split and stratified splits."""

from __future__ import annotations

import pytest
import torch

from famus.data import longtail_counts, longtail_indices, meta_split, per_class_counts, stratified_split


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def balanced(per_class: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return labels[torch.randperm(labels.numel(), generator=gen(seed))]


@pytest.mark.parametrize(
    ("n_max", "num_classes", "imbalance", "expected"),
    [
        (5000, 10, 100, [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]),
        (5000, 10, 10, [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]),
        (5000, 10, 1, [5000] * 10),
        (500, 100, 100, None),
        (7, 1, 50, [7]),
    ],
)
def test_longtail_counts_exact(n_max, num_classes, imbalance, expected):
    counts = longtail_counts(n_max, num_classes, imbalance)
    assert len(counts) == num_classes
    assert counts[0] == n_max
    if num_classes > 1:
        assert counts[-1] == n_max // imbalance
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))
    if expected is not None:
        assert counts == expected
    # Same floor as the formula (up to float noise exactly at integers).
    for i, n in enumerate(counts[1:-1], start=1):
        assert n == int(n_max * imbalance ** (-i / (num_classes - 1)))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((5000, 10, 0.5), "imbalance"),
        ((0, 10, 10), "n_max"),
        ((10, 0, 10), "num_classes"),
        ((10, 10, 100), "0 examples"),
    ],
)
def test_longtail_counts_validation(args, match):
    with pytest.raises(ValueError, match=match):
        longtail_counts(*args)


def test_longtail_indices_have_profile_counts():
    labels = balanced(5000, 10)
    idx = longtail_indices(labels, 100, gen(1))
    assert idx.dtype == torch.int64 and torch.equal(idx, idx.sort().values)
    assert idx.unique().numel() == idx.numel()
    assert per_class_counts(labels[idx], 10).tolist() == longtail_counts(5000, 10, 100)
    assert torch.equal(idx, longtail_indices(labels, 100, gen(1)))
    assert not torch.equal(idx, longtail_indices(labels, 100, gen(2)))


def test_longtail_indices_custom_n_max_and_too_small_class():
    labels = balanced(100, 5)
    idx = longtail_indices(labels, 10, gen(), n_max=60)
    assert per_class_counts(labels[idx], 5).tolist() == longtail_counts(60, 5, 10)
    with pytest.raises(ValueError, match="class 0 but it has only 100"):
        longtail_indices(labels, 10, gen(), n_max=200)


def test_meta_split_exact_per_class_disjoint_and_complete():
    labels = torch.cat([balanced(50, 10), torch.full((7,), 3)])  # class 3 a little larger
    train_idx, meta_idx = meta_split(labels, 10, gen(3))
    assert per_class_counts(labels[meta_idx], 10).tolist() == [10] * 10
    assert torch.isin(train_idx, meta_idx).sum() == 0
    assert torch.equal(torch.cat([train_idx, meta_idx]).sort().values, torch.arange(labels.numel()))
    assert torch.equal(meta_idx, meta_split(labels, 10, gen(3))[1])
    assert not torch.equal(meta_idx, meta_split(labels, 10, gen(4))[1])


def test_meta_split_zero_and_too_large():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    train_idx, meta_idx = meta_split(labels, 0, gen())
    assert meta_idx.numel() == 0 and torch.equal(train_idx, torch.arange(9))
    with pytest.raises(ValueError, match="class 1 has only 2"):
        meta_split(labels, 3, gen())
    with pytest.raises(ValueError, match="class 3 has only 0"):
        meta_split(labels, 1, gen(), num_classes=4)


def test_stratified_split_keeps_proportions():
    labels = torch.cat([torch.zeros(100), torch.ones(50), torch.full((10,), 2)]).long()
    train_idx, test_idx = stratified_split(labels, 0.2, gen())
    assert per_class_counts(labels[test_idx], 3).tolist() == [20, 10, 2]
    assert torch.equal(torch.cat([train_idx, test_idx]).sort().values, torch.arange(160))


def test_per_class_counts():
    assert per_class_counts(torch.tensor([2, 2, 0]), 4).tolist() == [1, 0, 2, 0]
    with pytest.raises(ValueError, match="1-D integer"):
        per_class_counts(torch.tensor([0.5]))
