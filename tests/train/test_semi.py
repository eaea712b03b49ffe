"""MixMatch batches of pseudo-clean co-training: targets, mixing, penalty."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from famus.train.semi import SemiLoss, mix_batch, prior_penalty, sharpen


def test_prior_penalty_is_kl_from_uniform():
    uniform = torch.zeros(7, 4)
    assert float(prior_penalty(uniform)) == 0.0
    logits = torch.randn(7, 4, generator=torch.Generator().manual_seed(0)) * 3
    mean = F.softmax(logits, 1).mean(0)
    expected = (0.25 * torch.log(0.25 / mean)).sum()
    assert torch.allclose(prior_penalty(logits), expected)
    assert float(prior_penalty(logits)) > 0


def test_sharpen_keeps_argmax_and_sums_to_one():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    q = sharpen(p, 0.5)
    assert torch.allclose(q.sum(1), torch.ones(2))
    assert torch.equal(q.argmax(1), p.argmax(1)) and bool((q.max(1).values > p.max(1).values).all())


def test_semi_loss_mean_is_labeled_mean_plus_unlabeled_mean():
    g = torch.Generator().manual_seed(1)
    logits, t = torch.randn(6, 3, generator=g), torch.softmax(torch.randn(6, 3, generator=g), 1)
    semi = SemiLoss(2, lambda_u=4.0)
    per = semi(logits, t)
    ce = -(t[:2] * F.log_softmax(logits[:2], 1)).sum(1)
    mse = ((F.softmax(logits[2:], 1) - t[2:]) ** 2).mean(1)
    assert torch.allclose(per, torch.cat([ce, 4.0 * mse]))
    assert torch.allclose(semi.mean(logits, t), ce.mean() + 4.0 * mse.mean())


class _Fixed(nn.Module):
    """Predicts fixed logits whatever the input (and has a BatchNorm to check eval mode)."""

    def __init__(self, logits):
        super().__init__()
        self.bn = nn.BatchNorm1d(2)
        self.logits = logits

    def forward(self, x):
        self.bn(x.reshape(x.shape[0], -1)[:, :2])
        return self.logits[: x.shape[0]]


def _views(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)


def test_label_refinement_and_co_guessing_targets():
    """Without mixing (alpha tiny: lam = 1) the targets are the refined labels and the co-guesses."""
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    other_logits = torch.tensor([[0.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    model, other = _Fixed(logits), _Fixed(other_logits)
    y = torch.tensor([1, 2])
    w = torch.tensor([1.0, 0.25])
    rng = np.random.default_rng(0)
    mb = mix_batch(model, other, _views(2, 0), y, w, _views(2, 1), 3, 0.5, 1e-4, rng, torch.Generator())
    assert abs(mb.lam - 1.0) < 1e-6 and mb.n_labeled == 2
    p = F.softmax(logits, 1)
    refined = sharpen(w[:, None] * F.one_hot(y, 3) + (1 - w[:, None]) * p, 0.5)
    guess = sharpen((F.softmax(logits, 1) + F.softmax(other_logits, 1)) / 2, 0.5)
    assert torch.allclose(mb.t, torch.cat([refined, guess]), atol=1e-5)
    assert torch.allclose(mb.t[0], F.one_hot(y[0], 3).float())  # w = 1: the noisy label itself
    for m in (model, other):  # guesses ran in eval mode: no BatchNorm statistics moved
        assert int(m.bn.num_batches_tracked) == 0 and m.training


def test_mixing_is_a_convex_combination_of_rows():
    model, other = _Fixed(torch.zeros(4, 3)), _Fixed(torch.zeros(4, 3))
    lv, uv = _views(2, 3), _views(2, 4)
    mb = mix_batch(model, other, lv, torch.tensor([0, 1]), torch.ones(2), uv, 3, 0.5, 4.0,
                   np.random.default_rng(1), torch.Generator().manual_seed(2), refine=False)
    x0 = torch.cat([lv[0], uv[0]])
    assert 0.5 <= mb.lam <= 1.0
    # each mixed row is lam * its own row + (1 - lam) * some row of the batch
    rest = (mb.x - mb.lam * x0) / (1 - mb.lam)
    assert all(any(torch.allclose(r, x0[j], atol=1e-5) for j in range(4)) for r in rest)
    assert torch.allclose(mb.t.sum(1), torch.ones(4), atol=1e-6)
