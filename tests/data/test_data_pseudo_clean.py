"""GMM pseudo-clean split on synthetic bimodal losses."""

import pytest
import torch

from famus.data.pseudo_clean import gmm_clean_probability, normalize_losses, split_by_probability, split_quality


def test_gmm_recovers_low_loss_group():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(600, generator=g) * 0.3          # low losses
    noisy = 2.0 + torch.rand(400, generator=g) * 1.5    # high losses
    losses = torch.cat([clean, noisy])[torch.randperm(1000, generator=g)]
    is_clean = losses < 1.0
    prob = gmm_clean_probability(losses)
    assert prob.shape == (1000,) and prob.dtype == torch.float64
    clean_idx, rest_idx = split_by_probability(prob, 0.5)
    assert set(clean_idx.tolist()) == set(torch.nonzero(is_clean).flatten().tolist())
    assert len(clean_idx) + len(rest_idx) == 1000
    q = split_quality(clean_idx, ~is_clean)
    assert q["split_precision"] == 1.0 and q["split_recall"] == 1.0


def test_gmm_probability_orders_by_loss():
    g = torch.Generator().manual_seed(1)
    losses = torch.cat([torch.randn(300, generator=g).abs() * 0.1, 1 + torch.randn(300, generator=g).abs()])
    prob = gmm_clean_probability(losses)
    assert float(prob[:300].mean()) > 0.9 > 0.1 > float(prob[300:].mean())


def test_split_fallback_and_errors():
    prob = torch.tensor([0.1, 0.2, 0.05, 0.3])
    clean, rest = split_by_probability(prob, 0.9, min_size=2)
    assert clean.tolist() == [1, 3] and rest.tolist() == [0, 2]
    with pytest.raises(ValueError, match="threshold"):
        split_by_probability(prob, 1.5)
    with pytest.raises(ValueError, match="at least 2"):
        gmm_clean_probability(torch.tensor([1.0]))
    assert torch.equal(normalize_losses(torch.ones(3)), torch.zeros(3, dtype=torch.float64))
